"""timm's Hub repos through huggingface_hub's cache: weights files and timm's config.json."""

from __future__ import annotations

import json

HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def hub_download(repo_id: str, filename: str) -> str:
    """A file of a Hub repo through huggingface_hub's cache (HF_HOME / HF_HUB_CACHE; HF_HUB_OFFLINE=1 reads
    the cache only). Raises one clear error saying which file to fetch and how to pass it."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id=repo_id, filename=filename)
    except Exception as e:  # offline, missing file, auth: all reported the same way
        raise OSError(
            f"could not get {filename} of Hub repo {repo_id} ({type(e).__name__}). On a connected machine run "
            f"`hf download {repo_id} {filename}` and pass the file as checkpoint_path=, or point HF_HOME at a "
            "cache that holds it"
        ) from e


def hub_weights(repo_id: str) -> str:
    """The repo's safetensors weights, or its pytorch_model.bin where only that exists."""
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return hub_download(repo_id, HUB_WEIGHT_FILES[0])
    except OSError as e:
        cause = e.__cause__
        # The repo answered that it has no safetensors file (not: the Hub could not be reached).
        if isinstance(cause, EntryNotFoundError) and not isinstance(cause, LocalEntryNotFoundError):
            return hub_download(repo_id, HUB_WEIGHT_FILES[1])
        raise


def hub_config(repo_id: str) -> dict:
    """timm's config.json of a Hub repo (`architecture`, `num_classes`, `pretrained_cfg`, ...)."""
    with open(hub_download(repo_id, "config.json")) as f:
        return json.load(f)
