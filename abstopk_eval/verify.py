"""`python -m abstopk_eval.verify [RESULTS_DIR] [--runs-dir DIR]`: check every stored result; exit 1 if any is wrong.

Each result file gets one status:

- ``ok``: it reads, matches its evaluation's schema, its identity recomputes (the result's hash from its fields, the
  folder's identity.json, the folder name, the config tag of its file name) and is today's identity for that
  evaluation, and it scored the very weights in the runs folder (sha256).
- ``unverifiable``: all of the above except the weights: no checkpoint for it in the runs folder (runs/ is not in
  git), or a baseline, which has no identity.
- ``stale (known, marked)``: written under an older version's evaluation config and marked so (``stale_config``, set
  by `abstopk_eval.migrate`); a run never takes it as current. Its schema may be the older version's.
- ``stale``: valid, but not what a run would take as current today: its evaluation's defaults or the identity
  version changed, or the checkpoint in the runs folder was retrained since (another sha256).
- ``orphaned``: not attached to a known SAE folder or evaluation: no identity.json beside it, no identity block, an
  unknown evaluation name, or a temporary file left by a killed write.
- ``corrupt``: unreadable, not its schema, or an identity that does not recompute (edited, truncated, or moved).

Exit status 0 when every result is ok, unverifiable or stale (known, marked); 1 otherwise; 2 for bad arguments.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from abstopk_eval import cli
from abstopk_eval import evals as _evals  # noqa: F401  (registers the evaluations)
from abstopk_eval.errors import UserError, exit_on_user_error
from abstopk_eval.evals.context import EVALS
from abstopk_eval.evals.options import config_identity
from abstopk_eval.identity import IDENTITY_JSON, IDENTITY_VERSION, SHORT, ResultIdentity, identity_hash
from abstopk_eval.io import sha256_file
from abstopk_eval.results import BASELINES_DIR, ResultFile, ResultKind, layer_dir, result_files
from abstopk_eval.training.trainer import SAE_DIRNAME
from abstopk_eval.workflow import group_hash, results_folder

OK, UNVERIFIABLE, STALE_MARKED, STALE, ORPHANED, CORRUPT = (
    "ok",
    "unverifiable",
    "stale (known, marked)",
    "stale",
    "orphaned",
    "corrupt",
)
STATUSES = (CORRUPT, ORPHANED, STALE, STALE_MARKED, UNVERIFIABLE, OK)
"""Worst first: a result's status is the worst of its findings."""
FAILING = frozenset({CORRUPT, ORPHANED, STALE})
WEIGHTS_FILE = "sae_weights.safetensors"


@dataclass
class Verdict:
    path: Path
    findings: list[tuple[str, str]] = field(default_factory=list)
    """(status, why) pairs; no finding means ok."""

    def add(self, status: str, why: str) -> None:
        self.findings.append((status, why))

    @property
    def status(self) -> str:
        return min((s for s, _ in self.findings), key=STATUSES.index, default=OK)

    def reasons(self) -> str:
        worst = self.status
        return "; ".join(why for s, why in self.findings if s == worst)


def _recomputes(record: dict[str, Any], fields: tuple[str, ...] | None = None) -> bool:
    """Whether `record["hash"]` is the hash of the record's identity fields (all but "hash", or only `fields`)."""
    body = {k: v for k, v in record.items() if k != "hash" and (fields is None or k in fields)}
    return isinstance(record.get("hash"), str) and identity_hash(body) == record["hash"]


_RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(ResultIdentity))


class Verifier:
    """Checks result files; remembers folder identities and weight digests so each is read once."""

    def __init__(self, results_dir: Path, runs_dir: Path | None) -> None:
        self.results_dir = results_dir
        self.runs_dir = runs_dir
        self._folders: dict[Path, dict[str, Any] | str] = {}
        self._digests: dict[Path, str] = {}

    def folder_identity(self, folder: Path) -> dict[str, Any] | str:
        """The folder's identity.json after checking it, or the problem ("missing" or a reason)."""
        if folder not in self._folders:
            self._folders[folder] = self._read_folder(folder)
        return self._folders[folder]

    def _read_folder(self, folder: Path) -> dict[str, Any] | str:
        path = folder / IDENTITY_JSON
        if not path.is_file():
            return "missing"
        try:
            record = json.loads(path.read_text())
            sae, eval_data = record["sae"], record["eval_data"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"{IDENTITY_JSON} is unreadable"
        if not (isinstance(sae, dict) and _recomputes(sae)):
            return f"the SAE identity in {IDENTITY_JSON} does not recompute to its hash"
        if not (isinstance(eval_data, dict) and _recomputes(eval_data)):
            return f"the evaluation-data identity in {IDENTITY_JSON} does not recompute to its hash"
        label = folder.name.rpartition("-")[0]
        if folder.name != results_folder(label, sae["hash"], eval_data["hash"]):
            return f"the folder name does not match the identity in its {IDENTITY_JSON}"
        if record.get("group") != group_hash(sae, eval_data["hash"]):
            return f"the seed group in {IDENTITY_JSON} does not recompute"
        return record

    def digest(self, path: Path) -> str:
        if path not in self._digests:
            self._digests[path] = sha256_file(path)
        return self._digests[path]

    def check(self, f: ResultFile) -> Verdict:
        verdict = Verdict(f.path)
        try:
            data = json.loads(f.path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            verdict.add(CORRUPT, f"unreadable ({type(err).__name__})")
            return verdict
        if not isinstance(data, dict):
            verdict.add(CORRUPT, "not a JSON object")
            return verdict
        identity = data.get("identity") if isinstance(data.get("identity"), dict) else None
        marked = bool(identity and identity.get("stale_config"))
        if marked:
            verdict.add(STALE_MARKED, "written under an older version's evaluation config (stale_config)")
        spec = EVALS.get(f.eval_name)
        if spec is None:
            verdict.add(ORPHANED, f"no evaluation is named {f.eval_name!r}")
            return verdict
        if spec.output_cls is not None:
            try:
                TypeAdapter(spec.output_cls).validate_python(data)
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                why = f"not the {f.eval_name} schema ({where}: {first['msg']})"
                verdict.add(STALE_MARKED if marked else CORRUPT, why if not marked else f"older schema: {why}")
        if f.kind is ResultKind.BASELINE:
            verdict.add(UNVERIFIABLE, "a baseline: no SAE, no identity to check")
            return verdict
        self._check_identity(f, data, identity, verdict, marked)
        return verdict

    def _check_identity(
        self, f: ResultFile, data: dict[str, Any], identity: dict[str, Any] | None, verdict: Verdict, marked: bool
    ) -> None:
        folder = self.folder_identity(f.path.parent)
        if folder == "missing":
            verdict.add(ORPHANED, f"its folder has no {IDENTITY_JSON}")
        elif isinstance(folder, str):
            verdict.add(CORRUPT, folder)
        if identity is None:
            verdict.add(
                ORPHANED, "it records no identity (written before identities; run python -m abstopk_eval.migrate)"
            )
            return
        if not _recomputes(identity, _RESULT_FIELDS):
            verdict.add(CORRUPT, "its identity does not recompute to its hash (edited?)")
            return
        if identity.get("eval_name") != f.eval_name:
            verdict.add(CORRUPT, f"its identity is of evaluation {identity.get('eval_name')!r}, not {f.eval_name!r}")
        if isinstance(folder, dict) and (
            identity.get("sae") != folder["sae"]["hash"] or identity.get("eval_data") != folder["eval_data"]["hash"]
        ):
            verdict.add(CORRUPT, f"its identity is of another SAE or evaluation data than its folder's {IDENTITY_JSON}")
        config = identity.get("config")
        tag = identity_hash(config)[:SHORT]
        options = identity.get("options") or {}
        if f.config_tag is not None and f.config_tag != tag:
            verdict.add(CORRUPT, "its file name's config tag is not its config's hash")
        if not marked:
            try:
                today = config_identity(f.eval_name, options)
            except UserError as err:
                today = None
                verdict.add(STALE, f"its options are no longer valid ({err})")
            if identity.get("version") != IDENTITY_VERSION:
                verdict.add(STALE, f"identity version {identity.get('version')}, today {IDENTITY_VERSION}")
            elif today is not None and config != today:
                verdict.add(STALE, f"the {f.eval_name} config it ran with differs from today's for its options")
            elif today is not None and f.config_tag is None and today != config_identity(f.eval_name):
                verdict.add(CORRUPT, "a result with options in the default result's file")
        if isinstance(folder, dict):
            self._check_weights(f, data, folder["sae"], verdict)

    def _check_weights(self, f: ResultFile, data: dict[str, Any], sae: dict[str, Any], verdict: Verdict) -> None:
        recorded = (data.get("provenance") or {}).get("sae_weights_sha256")
        if not recorded:
            verdict.add(UNVERIFIABLE, "it records no weights digest")
            return
        label = f.path.parent.name.rpartition("-")[0]
        run = layer_dir(self.runs_dir, f.model, f.layer) / f"{label}-{sae['hash'][:SHORT]}" if self.runs_dir else None
        weights = run / SAE_DIRNAME / WEIGHTS_FILE if run is not None else None
        if weights is None or not weights.is_file():
            verdict.add(UNVERIFIABLE, "no checkpoint in the runs folder to compare its weights digest with")
            return
        try:
            run_identity = json.loads((run / IDENTITY_JSON).read_text())
        except (OSError, ValueError):
            run_identity = None
        if isinstance(run_identity, dict) and run_identity.get("hash") != sae["hash"]:
            verdict.add(CORRUPT, f"the run folder {run} holds another SAE identity")
        elif self.digest(weights) != recorded:
            verdict.add(STALE, f"it scored other weights than {weights} holds now (retrained since)")


def leftovers(results_dir: Path) -> list[Path]:
    """Temporary files of killed atomic writes (never read as results; safe to delete)."""
    found = set(results_dir.glob("*/layer_*/*/.*.tmp")) | set(results_dir.glob(f"*/layer_*/{BASELINES_DIR}/*/.*.tmp"))
    return sorted(found)


def verify(results_dir: Path, runs_dir: Path | None) -> list[Verdict]:
    verifier = Verifier(results_dir, runs_dir)
    verdicts = [verifier.check(f) for f in result_files(results_dir)]
    for path in leftovers(results_dir):
        verdicts.append(Verdict(path, [(ORPHANED, "temporary file of an interrupted write; delete it")]))
    return verdicts


def report(verdicts: list[Verdict], results_dir: Path, verbose: bool) -> list[str]:
    """One line per result that is not ok (unverifiable ones only when `verbose`, else counted), then a summary."""
    lines = []
    for v in sorted(verdicts, key=lambda v: (STATUSES.index(v.status), v.path)):
        if v.status == OK or (v.status == UNVERIFIABLE and not verbose):
            continue
        lines.append(f"{v.status}: {v.path.relative_to(results_dir)}: {v.reasons()}")
    counts = Counter(v.status for v in verdicts)
    if counts[UNVERIFIABLE] and not verbose:
        why = Counter(v.reasons() for v in verdicts if v.status == UNVERIFIABLE).most_common(1)[0][0]
        lines.append(f"unverifiable: {counts[UNVERIFIABLE]} result(s), e.g. {why} (-v lists them)")
    summary = ", ".join(f"{counts[s]} {s}" for s in reversed(STATUSES) if counts[s])
    lines.append(f"{len(verdicts)} result file(s) in {results_dir}: {summary or 'none'}")
    return lines


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = cli.new_parser("python -m abstopk_eval.verify", __doc__)
    p.add_argument("results_dir", nargs="?", type=Path, default=Path("results"))
    p.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs"),
        help="where the trained SAEs are, to check each result's weights digest (default %(default)s; absent: "
        "weights are unverifiable)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="list unverifiable results one by one")
    args = p.parse_args(argv)
    if not args.results_dir.is_dir():
        raise UserError(f"{args.results_dir} is not a results directory")
    verdicts = verify(args.results_dir, args.runs_dir if args.runs_dir.is_dir() else None)
    print("\n".join(report(verdicts, args.results_dir, args.verbose)))
    if any(v.status in FAILING for v in verdicts):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
