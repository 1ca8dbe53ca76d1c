#!/usr/bin/env python3
"""Regenerates swtpm-eventlog.json, the synthetic measured-boot log that
softhsm-setup/provision.sh --tpm extends into a fresh swtpm. Each digest is
SHA-256 of the event's data string. Run: python3 generate-eventlog.py > swtpm-eventlog.json

The broker image is measured into PCR 10, as kernel IMA does on a real host (its template
name, ima-ng, as the type), never into PCR 16 or 23: software resets those from locality 0,
so a replaced broker could reset them and extend the expected digest. PCRs 0-15 are reset
only by a host reboot (TPM2_Startup(CLEAR)). See docs/ATTESTATION.md section 3."""
import hashlib
import json

EVENTS = [
    (0, "EV_S_CRTM_VERSION", "swtpm synthetic CRTM 1.0"),
    (0, "EV_POST_CODE", "synthetic firmware volume (seb test profile)"),
    (1, "EV_PLATFORM_CONFIG_FLAGS", "synthetic platform configuration"),
    (4, "EV_EFI_BOOT_SERVICES_APPLICATION", "synthetic bootloader seb-boot.efi"),
    (4, "EV_EFI_BOOT_SERVICES_APPLICATION", "synthetic kernel vmlinuz-seb"),
    (7, "EV_EFI_VARIABLE_DRIVER_CONFIG", "SecureBoot=1"),
    (0, "EV_SEPARATOR", "separator"),
    (1, "EV_SEPARATOR", "separator"),
    (4, "EV_SEPARATOR", "separator"),
    (7, "EV_SEPARATOR", "separator"),
    (10, "ima-ng", "seb broker image seb-0.1.0"),
]

lines = []
for pcr, kind, data in EVENTS:
    digest = hashlib.sha256(data.encode()).hexdigest()
    lines.append("    " + json.dumps({"pcr": pcr, "digest": digest, "type": kind, "data": data}))
print('{\n  "bank": "sha256",\n  "events": [\n' + ",\n".join(lines) + "\n  ]\n}")
