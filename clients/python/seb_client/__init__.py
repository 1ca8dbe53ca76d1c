"""seb's Python client: the agent side of the broker's API, an independent executor-side
token verifier, and (extra ``langchain``) a LangChain tool. See docs/AGENTS.md."""

from . import errors
from .client import Authority, Client, Grant, Granted, Pending
from .errors import SebError, VerifyError
from .jcs import canonicalize, params_digest, parse_strict
from .verify import TrustBundle, thumbprint, verify_token

__all__ = [
    "Authority", "Client", "Grant", "Granted", "Pending", "SebError", "TrustBundle",
    "VerifyError", "canonicalize", "errors", "params_digest", "parse_strict", "thumbprint",
    "verify_token",
]
