"""Which runtimes can take an adapter, decided from its files (for `adapterkit inspect`).

Each verdict is {ok, reasons, notes}: ok is True, False (reasons say why not) or None (a fact
it needs is not on this machine; reasons say which). The rules are the runtimes' own loaders':

    peft       `adapter_config.json` that peft's `PeftConfig.from_pretrained` accepts, and every
               tensor one that peft loads: a parameter of its method (lora_A, lora_B, ...) in a
               module the config targets, or a module it saves whole (`modules_to_save`).
    vllm       a LoRA in peft's format whose tensors are all LoRA matrices: vLLM refuses any
               other tensor ("... is unsupported LoRA weight", vllm#9280: a saved lm_head,
               embeddings or classifier) and DoRA; it serves LoRA on the linear layers (and
               embeddings) of generative decoder models.
    llama_cpp  the same LoRA-only rule (convert_lora_to_gguf.py: "Not a lora_A or lora_B tensor",
               llama.cpp#11554 for an lm_head), on a Llama-family causal LM whose module names the
               gguf package maps to GGUF tensor names.
    merge      `adapterkit merge` can write a standalone model: the strategy and the task are
               installed, the task has a Hugging Face model class (its `meta_model`), the base is
               here with the fingerprint the adapter was trained on, and every tensor fits it.

Nothing here names a strategy or a task: the tensor names, peft's config and the model class the
task builds decide.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapterkit.export.inspection import Facts

PEFT_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
LORA_MATRICES = ("lora_A", "lora_B")  # `<module>.lora_A.weight`
LORA_EMBEDDINGS = ("lora_embedding_A", "lora_embedding_B")  # `<module>.lora_embedding_A`
LORA_KIND = "lora_matrix"  # the kind of a lora_A / lora_B tensor in the report
LLAMA_MODEL_TYPES = frozenset({"llama", "mistral"})  # gguf's LLAMA architecture
_SERVED_MODULES = ("Linear", "Conv1D", "Embedding")  # what vLLM wraps with LoRA
_VLLM_DEFAULT_MAX_RANK = 16


# ---- the files ------------------------------------------------------------------------------------


def peft_config(directory: Path) -> tuple[Any, str | None, list[str]]:
    """(peft's config of `adapter_config.json`, None, what peft warned about while reading it),
    or (None, why there is none, [])."""
    if not (directory / PEFT_CONFIG).is_file():
        return None, f"no {PEFT_CONFIG}", []
    import warnings

    from peft import PeftConfig

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            config = PeftConfig.from_pretrained(str(directory))
        except (ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
            return None, f"peft refuses {PEFT_CONFIG}: {type(exc).__name__}: {exc}", []
    said = [f"peft: {str(w.message).split('. ')[0]}" for w in caught]
    return config, None, list(dict.fromkeys(said))


def peft_prefix(config: Any) -> str | None:
    """The parameter-name prefix of the config's peft method ("lora_" for LoRA), or None."""
    if config is None:
        return None
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING

    return PEFT_TYPE_TO_PREFIX_MAPPING.get(config.peft_type)


def tensor_kind(name: str, saved: list[str], prefix: str | None) -> str:
    """ "lora_matrix", "adapter" (another peft parameter), "module" (under a `modules_to_save` module)
    or "weight" (a plain model weight)."""
    parts = name.split(".")
    if (len(parts) > 2 and parts[-1] == "weight" and parts[-2] in LORA_MATRICES) or (
        parts[-1] in LORA_EMBEDDINGS
    ):
        return LORA_KIND
    if prefix and any(p.startswith(prefix) for p in parts):
        return "adapter"
    dotted = "." + name.removeprefix(PEFT_PREFIX)
    if any(f".{m}." in dotted for m in saved):
        return "module"
    return "weight"


def module_of(name: str, prefix: str | None = None) -> str:
    """The module a LoRA (or other peft) parameter belongs to, without peft's prefix."""
    parts = name.removeprefix(PEFT_PREFIX).split(".")
    for i, part in enumerate(parts):
        if part in LORA_MATRICES or part in LORA_EMBEDDINGS or (prefix and part.startswith(prefix)):
            return ".".join(parts[:i])
    return ".".join(parts[:-1])


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _verdict(reasons: list[str], unknown: list[str], notes: list[str]) -> dict[str, Any]:
    ok = False if reasons else (None if unknown else True)
    return {"ok": ok, "reasons": reasons or unknown, "notes": notes}


def verdicts(facts: Facts) -> dict[str, dict[str, Any]]:
    """The four verdicts, keyed peft, vllm, llama_cpp, merge."""
    return {
        "peft": _peft(facts),
        "vllm": _vllm(facts),
        "llama_cpp": _llama_cpp(facts),
        "merge": _merge(facts),
    }


# ---- checks shared by the verdicts ------------------------------------------------------------


def _lora_format(facts: Facts, runtime: str) -> list[str]:
    """Why the directory is not a LoRA adapter in peft's format (which `runtime` reads), if not."""
    config = facts.peft_config
    if _plain(facts):
        names = [t["name"] for t in facts.tensors]
        return [
            f"not a LoRA adapter: no {PEFT_CONFIG}, and its {len(names)} tensor(s) are the "
            f"model's own weights ({_few(names)}); {runtime} loads LoRA adapters in peft's format"
        ]
    if config is None:
        return [str(facts.peft_problem)]
    kind = str(getattr(config.peft_type, "value", config.peft_type))
    if kind != "LORA":
        return [f"a {kind} adapter; {runtime} loads LoRA adapters only"]
    return []


def _plain(facts: Facts) -> bool:
    """No peft config at all: the tensors are weights of the model itself (not an adapter)."""
    return facts.peft_config is None and not (facts.directory / PEFT_CONFIG).is_file()


def _non_lora(facts: Facts) -> list[str]:
    """Tensors that are not LoRA matrices, in a peft adapter (a plain one is reported whole)."""
    if _plain(facts):
        return []
    return [t["name"] for t in facts.tensors if t["kind"] != LORA_KIND]


def _lonely_halves(facts: Facts) -> list[str]:
    halves: dict[str, set[str]] = {}
    for t in facts.tensors:
        if t["kind"] == LORA_KIND:
            side = "A" if ("lora_A" in t["name"] or "lora_embedding_A" in t["name"]) else "B"
            halves.setdefault(module_of(t["name"]), set()).add(side)
    return sorted(m for m, sides in halves.items() if len(sides) != 2)


def _lora_modules(facts: Facts) -> list[str]:
    prefix = peft_prefix(facts.peft_config)
    found = {
        module_of(t["name"], prefix) for t in facts.tensors if t["kind"] in (LORA_KIND, "adapter")
    }
    return sorted(found)


def unfitting(facts: Facts) -> list[str]:
    """Tensors that match nothing in the task's model class (built on the meta device): a LoRA
    parameter of a module it lacks, a weight it lacks or has with another shape."""
    if facts.model is None:
        return []
    modules = dict(facts.model.named_modules())
    shapes = {k: list(v.shape) for k, v in facts.model.state_dict().items()}
    prefix = peft_prefix(facts.peft_config)
    bad = []
    for t in facts.tensors:
        if t["kind"] in (LORA_KIND, "adapter"):
            if module_of(t["name"], prefix) not in modules:
                bad.append(t["name"])
        else:
            key = t["name"].removeprefix(PEFT_PREFIX) if t["kind"] == "module" else t["name"]
            if shapes.get(key) != t["shape"]:
                bad.append(t["name"])
    return bad


def _model_name(facts: Facts) -> str | None:
    return type(facts.model).__name__ if facts.model is not None else None


def _base_unknown(facts: Facts, what: str) -> list[str]:
    base = facts.base
    if facts.model is not None:
        return []
    why = base.get("note") or (
        "it needs trust_remote_code" if base.get("trust_remote_code") else "it is not here"
    )
    return [
        f"{what} was not checked: the base model {base.get('name')!r} could not be read ({why})"
    ]


# ---- the verdicts -------------------------------------------------------------------------------


def _peft(facts: Facts) -> dict[str, Any]:
    config = facts.peft_config
    if config is None:
        if facts.peft_problem != f"no {PEFT_CONFIG}":
            return _verdict([str(facts.peft_problem)], [], [])
        example = facts.tensors[0]["name"] if facts.tensors else "none"
        why = f"not a peft adapter: no {PEFT_CONFIG}; the tensors are the model's own weights"
        return _verdict([f"{why} (e.g. {example})"], [], [])
    from peft.tuners.tuners_utils import check_target_module_exists

    prefix = peft_prefix(config)
    stray = []
    for t in facts.tensors:
        name, kind = t["name"], t["kind"]
        if not name.startswith(PEFT_PREFIX) or kind == "weight":
            stray.append(name)
        elif kind in (LORA_KIND, "adapter"):
            try:
                targeted = bool(check_target_module_exists(config, module_of(name, prefix)))
            except AttributeError:  # a config without the fields LoRA's matching reads
                targeted = True
            if not targeted:
                stray.append(name)
    reasons = []
    if stray:
        reasons.append(
            f"{len(stray)} tensor(s) peft would not load (not a parameter of a module the "
            f"config targets, nor of a module it saves whole): {_few(stray)}"
        )
    if bad := [n for n in unfitting(facts) if n not in stray]:
        reasons.append(f"{len(bad)} tensor(s) fit no module of {_model_name(facts)}: {_few(bad)}")
    notes = list(facts.peft_warnings)
    if not reasons and (model := _model_name(facts)):
        notes.append(
            f"PeftModel.from_pretrained({model}.from_pretrained(<base>), <this directory>)"
        )
    return _verdict(reasons, [], notes)


def _vllm(facts: Facts) -> dict[str, Any]:
    reasons = _lora_format(facts, "vLLM")
    config = facts.peft_config
    if not reasons and getattr(config, "use_dora", False):
        reasons.append("DoRA (use_dora): vLLM's LoRA loader does not load DoRA adapters")
    if others := _non_lora(facts):
        reasons.append(
            f"{len(others)} tensor(s) are not LoRA matrices, which vLLM refuses as 'unsupported "
            f"LoRA weight' (a module trained whole, such as an lm_head, embeddings or a "
            f"classifier: vllm#9280): {_few(others)}"
        )
    if lonely := _lonely_halves(facts):
        reasons.append(f"LoRA modules with only one of lora_A/lora_B: {_few(lonely)}")
    if (model := _model_name(facts)) and not model.endswith("ForCausalLM"):
        reasons.append(
            f"vLLM serves LoRA adapters of generative decoder models (...ForCausalLM); "
            f"this one is for a {model}"
        )
    if facts.model is not None:
        modules = dict(facts.model.named_modules())
        odd = [
            f"{m} ({type(modules[m]).__name__})"
            for m in _lora_modules(facts)
            if m in modules and type(modules[m]).__name__ not in _SERVED_MODULES
        ]
        if odd:
            reasons.append(f"LoRA on modules vLLM cannot wrap (linear layers only): {_few(odd)}")
    notes = []
    rank = int(getattr(config, "r", 0) or 0)
    if rank > _VLLM_DEFAULT_MAX_RANK:
        notes.append(f"rank {rank}: raise vLLM's max_lora_rank to {rank} or more (default 16)")
    return _verdict(reasons, _base_unknown(facts, "the architecture"), notes)


def _llama_cpp(facts: Facts) -> dict[str, Any]:
    reasons = _lora_format(facts, "llama.cpp")
    if others := _non_lora(facts):
        head = [n for n in others if "lm_head" in n or "embed" in n]
        why = " (an lm_head or embeddings in a LoRA: llama.cpp#11554)" if head else ""
        reasons.append(
            f"{len(others)} tensor(s) are not lora_A/lora_B matrices, and convert_lora_to_gguf.py"
            f" stops at the first ('Not a lora_A or lora_B tensor'){why}: {_few(others)}"
        )
    if lonely := _lonely_halves(facts):
        reasons.append(f"LoRA modules with only one of lora_A/lora_B: {_few(lonely)}")
    config = facts.model_config
    unknown: list[str] = []
    if config is None:
        unknown = _base_unknown(facts, "whether the base is a Llama-family model")
    elif config.model_type not in LLAMA_MODEL_TYPES:
        arch = ", ".join(getattr(config, "architectures", None) or []) or "?"
        reasons.append(
            f"a LoRA for llama.cpp here needs a Llama-family base ({', '.join(sorted(LLAMA_MODEL_TYPES))}); "
            f"this one is a {config.model_type} model ({arch})"
        )
    elif (model := _model_name(facts)) and not model.endswith("ForCausalLM"):
        reasons.append(f"llama.cpp runs causal LMs; this adapter is for a {model}")
    else:
        unmapped = _unmapped(facts, int(config.num_hidden_layers))
        if unmapped:
            reasons.append(f"modules with no GGUF tensor name: {_few(unmapped)}")
    notes = [] if reasons or unknown else [
        "llama.cpp's convert_lora_to_gguf.py --base <base directory> <this directory> "
        "writes the GGUF adapter that llama-cli and llama-server take beside the base GGUF"
    ]  # fmt: skip
    return _verdict(reasons, unknown, notes)


def _unmapped(facts: Facts, layers: int) -> list[str]:
    """LoRA modules the gguf package's LLAMA tensor map has no GGUF name for."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    return [m for m in _lora_modules(facts) if names.get_name(m, try_suffixes=(".weight",)) is None]


def _merge(facts: Facts) -> dict[str, Any]:
    reasons = _merge_plugins(facts)
    base_reasons, unknown = _merge_base(facts)
    reasons += base_reasons
    if bad := unfitting(facts):
        reasons.append(f"{len(bad)} tensor(s) fit no part of {_model_name(facts)}: {_few(bad)}")
    notes = []
    if not reasons and (model := _model_name(facts)):
        notes.append(f"adapterkit merge --adapter <this directory> --out DIR writes a {model}")
    return _verdict(reasons, unknown, notes)


def _merge_plugins(facts: Facts) -> list[str]:
    """Why the installed plugins cannot rebuild and save the adapted model, if they cannot."""
    from transformers import PreTrainedModel

    manifest, reasons = facts.manifest, []
    if facts.strategy is None:
        reasons.append(
            f"strategy '{manifest['strategy']['name']}' is not installed here "
            "(`adapterkit strategies` lists those that are)"
        )
    if facts.task is None:
        reasons.append(f"task '{manifest['task']['name']}' is not installed here")
    elif getattr(facts.task, "meta_model", None) is None:
        reasons.append(
            f"task '{manifest['task']['name']}' has no Hugging Face model class "
            "(no meta_model member)"
        )
    if facts.option_problems:
        reasons.append(
            "the manifest's options do not fit the installed plugins: "
            + "; ".join(facts.option_problems[:3])
        )
    if facts.model is not None and not isinstance(facts.model, PreTrainedModel):
        reasons.append(f"{_model_name(facts)} is not a transformers model, so it cannot be saved")
    return reasons


def _merge_base(facts: Facts) -> tuple[list[str], list[str]]:
    """(why the base cannot be merged into, what could not be checked about it)."""
    base = facts.base
    if base["resolves"] is False:
        return [f"merging needs the base model's weights: {base['note']}"], []
    if base["resolves"] is None:
        return [], [f"whether the base model is usable was not checked: {base['note']}"]
    if base["fingerprint_matches"] is False:
        return [
            f"the base model {base['name']!r} on this machine has another fingerprint than the "
            "one the adapter was trained on"
        ], []
    if facts.model is None and facts.task is not None and not facts.option_problems:
        return [], _base_unknown(facts, "whether every tensor fits the model")
    return [], []
