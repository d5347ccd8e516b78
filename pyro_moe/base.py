"""What every model and guide in the library shares.

A model is an ``nn.Module`` whose :meth:`PyroModel.model` is a Pyro model function with the
signature ``model(x, y=None, num_data=None)``: ``x`` is the input (or the observation of an
unsupervised model), ``y`` the target, ``num_data`` the size of the full data set when ``x`` is a
minibatch. Its sites use the library's vocabulary (``cluster``, ``latent``, ``obs``, ``label``,
``weights``) inside one ``pyro.plate("data")`` at dim -1 (see :func:`data_plate`).

A guide is an ``nn.Module`` called with the same arguments. Its networks are its own submodules;
when it reuses a model network (the MoE gate as q(c|x)) it keeps the model as a plain attribute
so the parameters are owned, saved and optimised once.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, ClassVar

import pyro
import torch
from pyro.params.param_store import ParamStoreDict, param_with_module_name
from pyro.poutine.indep_messenger import IndepMessenger
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK
from torch import nn
from torch.distributions.constraints import real

from pyro_moe.errors import ConfigError
from pyro_moe.validation import check_int


def data_plate(x: torch.Tensor, num_data: int | None = None) -> pyro.plate:
    """The ``data`` plate over the rows of ``x`` at dim -1.

    When ``x`` is a minibatch of a data set of ``num_data`` rows, the plate's subsample scale
    ``num_data / len(x)`` makes the log-likelihood an unbiased estimate of the full-data one.
    """
    n = x.shape[0]
    if num_data is None or num_data == n:
        return pyro.plate("data", n, dim=-1)
    if num_data < n:
        raise ConfigError(f"num_data={num_data} is smaller than the batch of {n} rows")
    return pyro.plate("data", num_data, subsample=torch.arange(n, device=x.device), dim=-1)


def register_module(name: str, module: nn.Module) -> nn.Module:
    """``pyro.module(name, module)``, skipped where it would change nothing.

    ``pyro.module`` walks the module's parameters and sends one ``pyro.param`` message per
    trainable parameter through Pyro's handler stack (13 messages per step for the small MoE's
    gate, experts and posterior network). The messages matter to a handler that reads or
    rewrites parameter sites (``poutine.trace``, which ``SVI`` uses to find the parameters;
    ``lift``, ``replay``, ``substitute``, ``block``, the vectorised pass's
    :class:`~pyro_moe.vectorised.PassParams`) and to the param store while it does not yet hold
    a parameter. They are skipped when neither is the case: every handler on the stack is
    parameter-transparent (:func:`params_unseen_by_handlers`) and the store holds each trainable
    parameter of ``module`` under its ``pyro.module`` name as the very same, unconstrained
    tensor, which is what the store's lookup would return. Otherwise ``pyro.module`` runs as
    written.
    """
    if params_unseen_by_handlers() and _store_holds(name, module):
        return module
    return pyro.module(name, module)


def params_unseen_by_handlers() -> bool:
    """Whether no handler on Pyro's stack acts on ``pyro.param`` messages: each is a plate
    (``IndepMessenger``), declares ``param_transparent = True`` (the estimators' trace
    recorder), or is a :class:`~pyro.poutine.messenger.Messenger` with Pyro's own message
    dispatch and no ``_pyro_param`` / ``_pyro_post_param`` method (e.g. the relaxed-gate
    handler)."""
    return all(_param_transparent(handler) for handler in _PYRO_STACK)


def _param_transparent(handler: Messenger) -> bool:
    if isinstance(handler, IndepMessenger) or getattr(handler, "param_transparent", False):
        return True
    kind = type(handler)
    return (
        kind._process_message is Messenger._process_message
        and kind._postprocess_message is Messenger._postprocess_message
        and not hasattr(kind, "_pyro_param")
        and not hasattr(kind, "_pyro_post_param")
    )


def store_holds_as_is(store: ParamStoreDict, name: str, value: torch.Tensor) -> bool:
    """Whether the param ``store`` holds ``value`` under ``name`` as the very same, unconstrained
    tensor: then ``pyro.param(name, value)`` would return ``value`` itself."""
    return store._params.get(name) is value and store._constraints[name] is real


def _store_holds(name: str, module: nn.Module) -> bool:
    store = pyro.get_param_store()
    for param_name, value in module.named_parameters():
        if value.requires_grad and not store_holds_as_is(
            store, param_with_module_name(name, param_name), value
        ):
            return False
    return True


def check_num_components(k: int) -> int:
    """``K`` must be a whole number >= 1."""
    return check_int("the number of components K", k)


def default_parameter_group(name: str) -> str:
    """``gate*`` -> gate, ``experts*`` / ``raw_scale`` -> experts, anything else -> model."""
    if name.startswith("gate"):
        return "gate"
    if name.startswith(("experts", "raw_scale")):
        return "experts"
    return "model"


def _capture_options(init):
    """Wrap a model's ``__init__`` so that, once it has run, ``self.hparams`` holds the keyword
    options it was called with, defaults filled in (keyword-only parameters and any ``**options``);
    a subclass's options update its base classes'."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        options = {}
        for name, p in signature.parameters.items():
            if p.kind is p.KEYWORD_ONLY:
                options[name] = bound.arguments[name]
            elif p.kind is p.VAR_KEYWORD:
                options.update(bound.arguments.get(name, {}))
        self.hparams = {**self.hparams, **options}

    return __init__


class PyroModel(nn.Module):
    """Base class: the generative story lives in :meth:`model`; the constructor's keyword options
    are captured from its signature into ``hparams`` (a subclass does not list them again)."""

    #: the name under which the model registers its parameters with ``pyro.module``
    pyro_name: ClassVar[str] = "model"
    #: enumeration dims are allocated to the left of this many plate dims
    max_plate_nesting: ClassVar[int] = 1
    #: the guide used with sampling estimators when the user names none
    default_guide: ClassVar[str] = "posterior"
    #: the guide used with ``enum`` when the user names none (None: ``default_guide``)
    exact_guide: ClassVar[str | None] = None
    #: validation metric that early stopping watches
    monitor: ClassVar[str] = "valid_loss"
    #: the tasks (data set kinds) the model can be trained on
    tasks: ClassVar[tuple[str, ...]] = ("regression", "classification", "clustering")
    #: a tiny run of this model that trains in about a second, for the registry-wide tests:
    #: ``{"data": name, "data_options": {...}, "model_options": {...}, "estimator": name}``
    smoke_spec: ClassVar[dict[str, Any]] = {}
    #: whether TraceEnum_ELBO can sum the discrete latents out (False: a latent inside a nested
    #: plate feeds a site outside it, so only a joint enumeration could, e.g. the categorical VAE)
    traceenum_summable: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _capture_options(cls.__dict__["__init__"])

    def __init__(self, **hparams: Any) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = dict(hparams)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None):
        raise NotImplementedError

    def evaluate(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
        """Model-specific metrics on held-out data (no gradient); empty by default."""
        return {}

    def pretrain(self, x: torch.Tensor, seed: int) -> dict[str, Any] | None:
        """A data-dependent start (autoencoder pretraining, k-means++ restarts, ...) on the
        training inputs ``x``: the first step of a fresh run (:func:`~pyro_moe.train.fit`), with
        the run's ``seed``, never repeated by a resume. Returns a record of plain numbers that
        the checkpoint keeps, or ``None`` when there is nothing to do (the default)."""
        return None

    @classmethod
    def options(cls) -> dict[str, Any]:
        """Constructor keyword options and their defaults (what ``--option key=value`` may set)."""
        signature = inspect.signature(cls.__init__)
        return {
            name: p.default for name, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY
        }

    @classmethod
    def from_data(cls, data: Any, **options: Any) -> PyroModel:
        """Build the model for a :class:`~pyro_moe.data.Dataset` with keyword ``options``."""
        known = cls.options()
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(
                f"{cls.__name__} has no option {', '.join(unknown)}; known: {', '.join(known)}"
            )
        if data.task not in cls.tasks:
            raise ConfigError(
                f"{cls.__name__} cannot be trained on a {data.task} data set ({data.name}); "
                f"it handles: {', '.join(cls.tasks)}"
            )
        return cls(data.input_dim, data.output_dim, data.task, **options)

    # --- what a model may provide: the plots, metrics, trainer and harness ask through these
    # hooks; the defaults say "not provided" ---------------------------------------------------
    #: input and target widths and the task the model was built for (0 / None: not fixed)
    input_dim: int = 0
    output_dim: int = 0
    task: str | None = None

    def gate_log_probs(self, x: torch.Tensor) -> torch.Tensor | None:
        """log p(c|x) of a model gated by its input: ``[N, K]``; None without such a gate."""
        return None

    def predict_cluster(self, x: torch.Tensor) -> torch.Tensor | None:
        """The most probable cluster of each row: ``[N]`` integers; None for models without
        clusters (then no clustering scores or figures)."""
        return None

    def embed(self, x: torch.Tensor) -> torch.Tensor | None:
        """Latent coordinates of ``x`` (the encoder's means): ``[N, L]``; None without an
        encoder (figures then use the inputs themselves)."""
        return None

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor | None:
        """Reconstructions of ``x`` through the latent space: ``[N, D]``; None without one."""
        return None

    def cluster_samples(self, per_cluster: int = 8, seed: int = 0) -> torch.Tensor | None:
        """Decoder means f(z) for z ~ p(z|c = k): ``[K, per_cluster, D]``; None without a
        mixture prior and a decoder."""
        return None

    def parameter_group(self, name: str) -> str:
        """The gradient harness's group of parameter ``name``: ``gate*`` -> gate,
        ``experts*`` / ``raw_scale`` -> experts, anything else -> model."""
        return default_parameter_group(name)

    def validation_estimator(self) -> Any | None:
        """What validation scores, with ``value(model_fn, guide, x, y) -> float``; None: the
        discrete objective summed out exactly (``enum``). A model whose K^L assignments cannot
        be enumerated returns a Monte Carlo ELBO here."""
        return None


class PyroGuide(nn.Module):
    """Base class for guides: ``guide(x, y=None, num_data=None)`` with the model's site names."""

    pyro_name: ClassVar[str] = "guide"
    #: whether the guide samples the ``cluster`` site (False: the model's gate is summed out)
    samples_cluster: ClassVar[bool] = True
    #: whether the guide has no sample sites at all (``enum`` may then skip running it)
    is_empty: ClassVar[bool] = False
    #: model classes this guide fits (empty: any)
    model_types: ClassVar[tuple[type, ...]] = ()

    def __init__(self, model: PyroModel) -> None:
        super().__init__()
        if self.model_types and not isinstance(model, self.model_types):
            names = ", ".join(t.__name__ for t in self.model_types)
            raise ConfigError(
                f"guide {type(self).__name__} fits models of type {names}, "
                f"not {type(model).__name__}"
            )
        object.__setattr__(self, "_model", model)  # shared, not a submodule

    @property
    def target(self) -> PyroModel:
        """The model this guide approximates the posterior of."""
        return self._model

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None):
        raise NotImplementedError
