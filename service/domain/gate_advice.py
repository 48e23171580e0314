"""Who lost each forgotten class, and the one next step the gate report names.

Pure Python over the gate's per-class rows, the strategy's own train-time figures and what is true of the
job, so every branch is tested without training. The parameters a step names and their defaults (generator
kinds, iterations, sizes, exemplars per class) come from ``model_core.strategy_specs``; only which generator
parameter belongs to which kind, and when a change to it takes effect, is written here (``GENERATOR_KNOBS``).

Who lost a class: generative replay measures, at train time, how often the parent recognises the
generator's replayed samples of each old class (``replay_accuracy``). When the replay keeps less than
``REPLAY_SHARE`` of the parent's above-chance accuracy on the class's real samples, the generator no longer
produces the class: the classifier never saw it again. Otherwise the replay was recognisable and the
classifier lost the class anyway (it learnt something else, such as real-versus-replayed images). With
fewer than ``MIN_RIVALS`` old classes there is no verdict: a parent that knows two classes recognises any two
distinct blobs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from model_core.config import PACKAGE_WEIGHTS
from model_core.strategy_specs import SPECS, StrategySpec

# The generator lost a class when (replay - chance) < REPLAY_SHARE * (real - chance), chance being 1 / the
# classes the parent chose among: most of what the classifier was shown as that class was not the class.
REPLAY_SHARE = 0.5
# No verdict when the parent chose among fewer classes: it tells any two distinct blobs apart. The forced
# failure of tests/e2e/test_gate_report.py (a VAE trained one step per task) scored 1.0 on both old classes
# when its first task was digits 0-1; with digits 0-2 it scores 0.0, 0.0 and 1.0 (all replay looks like a 2).
MIN_RIVALS = 3
NAMES_SHOWN = 6  # forgotten classes named in the text before "and N more"
# A linear probe on the classifier's features telling real from replayed samples of the same classes (generative
# replay's ``replay_artefact_probe``) right this often means the replay carries an artefact; 0.5 is none.
ARTEFACT_PROBE = 0.75
LESS_NOISE = {"isotropic": "residual", "residual": "none"}  # class_gaussians' noise kinds, each with less artefact


@dataclass(frozen=True)
class JobFacts:
    """What is true of the job, for choosing a next step."""

    params: Mapping[str, Any] = field(default_factory=dict)  # the strategy's parameters as run (defaults in)
    iterations: int | None = None  # the classifier's optimiser steps in this job
    network: Mapping[str, Any] = field(default_factory=dict)  # the classifier's NetworkSpec.to_dict()
    # How training ended (model_core TrainResult.summary(): steps, budget, stopped, improving, best_step); None
    # when unknown. "Train longer" is advised only when the validation loss was still falling at the end.
    training: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Step:
    text: str  # one sentence: who lost what, then what to change
    # The request fields that make the change: learn-request fields ({"params": {...}}, {"strategy": ...},
    # {"options": {...}}), or {"classifier": {...}} for fields of a new classifier (its backbone).
    request: dict[str, Any] | None


def has_generator(spec: StrategySpec) -> bool:
    """Whether the strategy replays from a generator (it has generator parameters)."""
    return any(k.startswith("generator") for k in spec.defaults)


def lost_by(row: Mapping[str, Any], generator: bool, chance: float) -> str | None:
    """Who lost a forgotten class row: "generator" or "classifier"; None when the generator was not measured,
    or the parent's judgement of its replay says nothing (fewer than ``MIN_RIVALS`` classes to choose among, or
    the class known no better than ``chance``)."""
    if not generator:
        return "classifier"
    replayed, real = row.get("replay_accuracy"), float(row["before"])
    if replayed is None or chance > 1 / MIN_RIVALS or real <= chance:
        return None
    return "generator" if replayed - chance < REPLAY_SHARE * (real - chance) else "classifier"


def _names(rows: Sequence[Mapping[str, Any]]) -> str:
    labels = list(dict.fromkeys(str(r["class"]) for r in rows))
    shown = ", ".join(repr(c) for c in labels[:NAMES_SHOWN])
    return shown + (f" and {len(labels) - NAMES_SHOWN} more" if len(labels) > NAMES_SHOWN else "")


@dataclass(frozen=True)
class Knobs:
    """A generator kind's parameters, by when a change takes effect."""

    training: tuple[str, ...] = ()  # fit the generator after a job (more is better): relearn the lost classes
    sampling: tuple[str, ...] = ()  # shape this job's replay (less is better): learn this task again
    size: tuple[str, ...] = ()  # fixed when a classifier first learns (more is better): a new classifier


# Which of generative replay's parameters belong to which generator kind. The spec names the kinds
# (``choices["generator"]``) and their defaults; this groups them by when a change takes effect: the saved
# generator's kind and size win over a later job's parameters, and a class-Gaussian model, once fitted, is
# kept as is (model_core.strategies.generative_replay).
GENERATOR_KNOBS = {
    "vae": Knobs(training=("generator_iterations",), sampling=("sample_temperature",), size=("hidden", "latent_dim")),
    "class_gaussians": Knobs(sampling=("noise_scale",), size=("components", "rank")),
}
RELEARN = "learn those classes' tasks again, then this one,"
RETRY = "learn this task again"
NEW_CLASSIFIER = "start a new classifier (its first task fixes the generator's kind and size) and learn every task"


def _kind_key(spec: StrategySpec) -> str | None:
    """The parameter that picks the generator kind: a string choice named after the generator."""
    return next((k for k in spec.choices if "generator" in k or "kind" in k), None)


def _listed(change: Mapping[str, Any], params: Mapping[str, Any], note: str = "") -> str:
    return ", ".join(f"{k} {v!r} ({note}this job ran {params[k]!r})" for k, v in change.items())


def _generator_step(spec: StrategySpec, who: str, facts: JobFacts, only_defaults: bool = False) -> Step | None:
    """A generator parameter set worse than its default -> the default; then, unless ``only_defaults``: a kind
    other than the default -> the default kind; the default kind at its defaults -> a bigger one; an enlarged
    one -> the other kind."""
    params = {**spec.defaults, **facts.params}
    kind_key = _kind_key(spec)
    kind = params.get(kind_key) if kind_key else None
    knobs = GENERATOR_KNOBS.get(str(kind), Knobs())
    present = {
        k for k in spec.defaults if isinstance(spec.defaults[k], int | float) and isinstance(params[k], int | float)
    }
    grow = [k for k in (*knobs.training, *knobs.size) if k in present]
    worse = {k: spec.defaults[k] for k in grow if params[k] < spec.defaults[k]}
    worse.update({k: spec.defaults[k] for k in knobs.sampling if k in present and params[k] > spec.defaults[k]})
    if worse:
        where = (
            NEW_CLASSIFIER if set(worse) & set(knobs.size) else RELEARN if set(worse) & set(knobs.training) else RETRY
        )
        return Step(f"{who}: {where} with {_listed(worse, params, 'its default; ')}", {"params": worse})
    if kind_key is None or only_defaults:
        return None
    default_kind = spec.defaults[kind_key]
    if kind != default_kind:
        return Step(f"{who}: {NEW_CLASSIFIER} with {kind_key} {default_kind!r} (the default) instead of {kind!r}",
                    {"params": {kind_key: default_kind}})  # fmt: skip
    if grow and all(params[k] == spec.defaults[k] for k in grow):
        bigger = {k: 2 * params[k] for k in grow}
        where = NEW_CLASSIFIER if set(bigger) & set(knobs.size) else RELEARN
        return Step(f"{who}: {where} with a bigger generator: {_listed(bigger, params)}", {"params": bigger})
    others = [c for c in spec.choices[kind_key] if c != kind]
    if not others:
        return None
    return Step(f"{who}: {NEW_CLASSIFIER} with {kind_key} {others[0]!r} instead of {kind!r}",
                {"params": {kind_key: others[0]}})  # fmt: skip


def _exemplars(strategy: str, retention: str, who: str) -> Step | None:
    replay = SPECS.get("replay")
    if retention != "keep" or SPECS[strategy].stores_data or replay is None:
        return None
    per_class = replay.defaults.get("per_class")
    kept = f" ({per_class} exemplars per class)" if per_class else " (a third of each class's samples, at least 20)"
    return Step(f"{who}: this job may keep data, so learn it with strategy 'replay'{kept}", {"strategy": "replay"})


# Task-incremental strategies that share one network across tasks, so a later task can change an old one's
PARTITION_REPLACES = frozenset({"naive", "ewc", "lwf", "mas"})
MASKABLE_BACKBONES = ("mlp", "cnn")  # packnet masks their layers; progressive columns any backbone


def _partitioned(strategy: str, network: Mapping[str, Any], who: str) -> Step | None:
    """A task-incremental job with a shared-weights strategy forgot: packnet (on a maskable backbone) or
    progressive keep every old task exactly. On a trainable backbone they must learn from the first task."""
    if strategy not in PARTITION_REPLACES or network.get("scenario") != "task-incremental":
        return None
    backbone = network.get("backbone")
    spec = backbone if isinstance(backbone, Mapping) else {"name": backbone}
    better = "packnet" if spec.get("name") in MASKABLE_BACKBONES else "progressive"
    where = ("learn this task again" if spec.get("train") == "frozen" else
             "create a new task-incremental classifier and learn every task")  # fmt: skip
    return Step(f"{who}: {where} with strategy {better!r}, which freezes each learned task's own weights, so old "
                "tasks are exactly preserved", {"strategy": better})  # fmt: skip


def _pretrained(network: Mapping[str, Any], who: str) -> Step | None:
    """Photos (RGB images) on a backbone trained from scratch: a pretrained backbone, frozen by default, keeps
    the lower layers stable. Named from the backbones whose weights ship in an installed package."""
    inp = network.get("input") or {}
    backbone = network.get("backbone")  # a name in older specs, else BackboneSpec.to_dict()
    weights = backbone.get("weights") if isinstance(backbone, Mapping) else None
    if inp.get("kind") != "image" or inp.get("channels") != 3 or not PACKAGE_WEIGHTS or weights not in (None, "none"):
        return None
    return Step(f"{who}: for photos, create the classifier with the pretrained backbone {PACKAGE_WEIGHTS[0]!r} "
                "and learn its tasks again", {"classifier": {"backbone": PACKAGE_WEIGHTS[0]}})  # fmt: skip


def _closed_form(strategy: str, who: str, params: Mapping[str, Any]) -> Step:
    """What would help a head solved in closed form (no steps to add): for ``analytic``, the class balance where the
    job weighed samples, random features where it read the features as they are (a new classifier: the sums are
    kept in the features the first job chose); otherwise more samples of the lost classes, or better features."""
    if strategy == "analytic" and params.get("balance") == "samples":
        return Step(f"{who}: learn this task again with balance 'classes' (this job ran 'samples'), so every class "
                    "weighs the same however many samples each task sends", {"params": {"balance": "classes"}})  # fmt: skip
    if strategy == "analytic" and params.get("features") == "input":
        return Step(f"{who}: start a new classifier and learn its tasks with features 'random' (this job ran 'input'): "
                    "the ridge head on a random expansion of the features separates classes that a ridge on the "
                    "features themselves confuses", {"params": {"features": "random"}})  # fmt: skip
    return Step(f"{who}; this head is solved in closed form from the samples it was sent: send more samples of the "
                "classes it lost and of those it confused them with (a task of classes already known adds them), or "
                "use a backbone whose features tell them apart", None)  # fmt: skip


def _more_steps(who: str, iterations: int | None, training: Mapping[str, Any] | None = None,
                strategy: str = "", params: Mapping[str, Any] | None = None) -> Step:  # fmt: skip
    """More classifier steps, when they would help: the validation loss was still falling when training ended
    (or how it ended is not known). A head solved in closed form gets what would help it instead
    (``_closed_form``); otherwise a sentence saying why more steps would not help, with no request."""
    if training is not None and training.get("stopped") == "closed-form":
        return _closed_form(strategy, who, {**SPECS[strategy].defaults, **(params or {})} if strategy in SPECS else {})
    if training is not None and not training.get("improving", True):
        best, steps = training.get("best_step"), training.get("steps")
        return Step(f"{who}; more steps would not help: its validation loss stopped improving at step {best} "
                    f"of the {steps} it ran", None)  # fmt: skip
    if iterations is None:
        return Step(f"{who}: train the classifier longer (raise options.iterations)", None)
    return Step(f"{who}: train the classifier longer, options.iterations {2 * iterations} (this job ran {iterations})",
                {"options": {"iterations": 2 * iterations}})  # fmt: skip


def next_step(
    strategy: str,
    retention: str,
    cannot_add_classes: bool,
    forgotten: Sequence[Mapping[str, Any]],
    new_task_failed: bool,
    facts: JobFacts,
    diagnostics: Mapping[str, Any],
) -> Step | None:
    """The first step that fits, in this order: a strategy that can add classes; for a generator that lost (or
    may have lost) a class, ``_generator_step``; for a task-incremental job with a shared-weights strategy, packnet
    or progressive (``_partitioned``); exemplars when data may be kept; a pretrained backbone for
    photos; more classifier steps. None when nothing was forgotten and the new task reached its floor."""
    spec = SPECS[strategy]
    if cannot_add_classes and forgotten:
        better = "generative_replay" if retention == "discard" else "replay"
        return Step(f"'{strategy}' cannot add classes to one head and lost {_names(forgotten)}: "
                    f"learn this task with strategy {better!r}", {"strategy": better})  # fmt: skip
    if not forgotten:
        return (_more_steps("the new task missed its floor", facts.iterations, facts.training, strategy, facts.params)
                if new_task_failed else None)  # fmt: skip
    by_generator = [r for r in forgotten if r.get("lost_by") == "generator"]
    unmeasured = [r for r in forgotten if r.get("lost_by") is None]
    suspect = bool(by_generator or unmeasured)
    classifier = f"the classifier lost {_names(forgotten)}"
    if has_generator(spec) and not suspect:
        classifier += " although its replay was recognised"
    if by_generator:
        who = f"the generator lost {_names(by_generator)}"
    elif unmeasured:
        who = f"lost {_names(unmeasured)} (by the generator or the classifier: not known)"
    else:
        who = classifier
    artefact = diagnostics.get("replay_artefact_probe")
    params = {**spec.defaults, **facts.params}
    if has_generator(spec) and isinstance(artefact, int | float) and artefact >= ARTEFACT_PROBE and not by_generator:
        quieter = LESS_NOISE.get(str(params.get("noise")))
        if quieter is not None and params.get("generator") == "class_gaussians":
            return Step(f"{classifier}, and its features tell replayed samples from real ones (a linear probe is "
                        f"right {artefact:.2f} of the time; 0.5 would be none): {RETRY} with noise {quieter!r} "
                        f"(this job ran {params.get('noise')!r})", {"params": {"noise": quieter}})  # fmt: skip
    # A generator run below its defaults is named whoever lost the class: it is a fact of the job, and the
    # replay figure is a weak witness.
    step = _generator_step(spec, who, facts, only_defaults=not suspect) if has_generator(spec) else None
    if step is not None:
        return step
    who = classifier
    return (_partitioned(strategy, facts.network, who) or _exemplars(strategy, retention, who)
            or _pretrained(facts.network, who)
            or _more_steps(who, facts.iterations, facts.training, strategy, facts.params))  # fmt: skip
