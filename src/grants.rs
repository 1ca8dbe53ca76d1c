//! Placeholder; see the grants issue.
