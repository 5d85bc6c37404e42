"""Whether this machine can reach the Hugging Face Hub, found out in about a second.

Without it, a Hub name that is not in the local cache costs a machine without network tens of seconds of HTTP
retries (and a page of retry lines) before it fails. One short request to the Hub answers the
question (an HTTPS request, certificate checked: a firewall that accepts every connection is not the Hub); if it
fails, the process switches huggingface_hub, transformers and datasets to offline mode, so a
cached model or data set still loads at once and an uncached one fails at once with a line that says so.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import urllib.error
import urllib.request

PROBE_TIMEOUT_S = 1.5
"""How long the connection to the Hub may take before the machine counts as offline."""
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def offline_requested() -> bool:
    """The user (or this process, after a failed probe) asked the Hugging Face libraries to stay offline."""
    return any(os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE") for name in OFFLINE_VARIABLES)


@functools.cache
def hub_reachable() -> bool:
    """True if the Hub answers an HTTPS request within ``PROBE_TIMEOUT_S``; False switches to offline mode.

    An explicit offline setting is taken at its word without asking. The request goes through the proxies the
    environment names, as the Hugging Face libraries' requests do."""
    if offline_requested():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    if _answers(f"{endpoint}/api/whoami-v2", PROBE_TIMEOUT_S):
        return True
    go_offline()
    return False


def _answers(url: str, timeout: float) -> bool:
    """Any HTTP answer (an error status included) within ``timeout`` seconds, name lookup and TLS handshake
    included. The lookup has no timeout of its own, so the request runs in a daemon thread that is abandoned if
    it is late."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                result.append(True)
        except urllib.error.HTTPError:
            result.append(True)  # the server answered
        except (OSError, ValueError):  # no route, no name, refused, timed out, a certificate for another host
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def go_offline() -> None:
    """Offline mode for the rest of this process, in the environment and in the libraries already imported
    (they read the variables once, at import)."""
    for name in OFFLINE_VARIABLES:
        os.environ[name] = "1"
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:
        config = sys.modules["datasets.config"]
        config.HF_HUB_OFFLINE = True
        config.HF_DATASETS_OFFLINE = True


def in_model_cache(repo_id: str) -> bool:
    """A model's config.json is in the local Hugging Face cache (what from_pretrained needs offline first)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an ill-formed repo id: not in the cache
        return False
    return isinstance(found, str)
