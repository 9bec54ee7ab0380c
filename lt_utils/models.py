"""Foundation models, heads, classifiers and checkpoints: one interface for the CLIP family and the lab's ViTs.

Real models are built **natively by open_clip** (architecture + pretrained tag, or a local file), so OpenCLIP keeps
its GELU and its weights (the official code rebuilt it through OpenAI's class, with QuickGELU and random weights).
The lab's models are tiny open_clip ``VisionTransformer``s pre-trained by ``lt_utils.lab``; the rows of their
supervised head play the role of CLIP's text features.

A ``FoundationModel`` exposes the vision tower *without* its projection (``visual(x)`` returns the pre-projection
feature, 768-d for ViT-B/16, as in LIFT) and keeps the projection as the buffer ``proj``. Zero-shot logits are then
``logit_scale * normalize(f @ proj) @ text.T``: a head on the same features the fine-tuned heads use.
"""
from __future__ import annotations

import json
import os
from copy import deepcopy
from pathlib import Path
from typing import Optional, Sequence, Union

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from .cache import atomic_write
from .peft import apply_peft
from .profiles import get_device, hide_progress

# name -> (open_clip architecture, pretrained tag). OpenAI's CLIP and MetaCLIP were trained with QuickGELU, so
# they use the "-quickgelu" architectures; open_clip 3.x would otherwise build ViT-B-16 with GELU on OpenAI's
# weights and only warn. OpenCLIP (laion2b) was trained with GELU and keeps it.
FOUNDATION_MODELS = {
    "clip": ("ViT-B-16-quickgelu", "openai"),
    "openclip": ("ViT-B-16", "laion2b_s34b_b88k"),
    "metaclip": ("ViT-B-16-quickgelu", "metaclip_400m"),
}  # lt_utils.lab adds its five lab models
_BUILTIN_MODELS = dict(FOUNDATION_MODELS)

SINGLE_TEMPLATE = "a photo of a {}."
HEADS = ("cosine", "linear")
_FILE_KEY = "lt_utils"  # the safetensors metadata entry holding our JSON


# --- the zoo -----------------------------------------------------------------------------------------------------
_LOCAL_WEIGHTS: dict = {}  # name -> local weights file given at registration (used when pretrained=None)
# arch -> (loader(name, tag, pretrained: Path | None) -> FoundationModel, the lt_utils modules whose code it runs)
# for architectures that are not open_clip's (lt_utils.lab registers "lab-vit")
_FAMILIES: dict = {}


def register_model_family(arch: str, loader, modules: Sequence[str]) -> None:
    """Let ``load_foundation_model`` build architecture ``arch`` with ``loader(name, tag, pretrained)``, where
    ``pretrained`` is a local file or None (the zoo's weights). ``modules``: the lt_utils modules whose code the
    loader runs, pre-training included (part of the cache keys of results computed with these models)."""
    _FAMILIES[arch] = (loader, tuple(modules))


def model_modules(name: str) -> tuple[str, ...]:
    """The lt_utils modules whose code builds foundation model ``name`` (``("models",)`` for open_clip models)."""
    if name not in FOUNDATION_MODELS:
        raise ValueError(f"Unknown foundation model {name!r}; choose one of {', '.join(FOUNDATION_MODELS)}.")
    family = _FAMILIES.get(FOUNDATION_MODELS[name][0])
    return family[1] if family else ("models",)


def register_foundation_model(name: str, arch: str, tag: Optional[str] = None,
                              weights: Union[str, os.PathLike, None] = None, *, builtin: bool = False) -> None:
    """Add ``name -> (arch, tag)`` to ``FOUNDATION_MODELS``, e.g. to fine-tune another CLIP (chapter 4's
    exercises).

    Args:
        name: the new model's name (not one of the built-in models).
        arch: an open_clip architecture (register your own config first with ``open_clip.add_model_config``)
            or a registered family such as ``"lab-vit"``.
        tag: an open_clip pretrained tag, or None when the weights come from a local file.
        weights: a local weights file; then every ``fine_tune`` / ``zero_shot`` call finds them (e.g. weights
            copied to a Drive folder). ``load_foundation_model(name, pretrained=<file>)`` works per call too.
        builtin: for lt_utils' own zoo (the lab registers its models so): the name cannot be taken later.

    Returns:
        None.
    """
    if name in _BUILTIN_MODELS and _BUILTIN_MODELS[name] != (arch, tag):
        raise ValueError(f"{name!r} is a built-in foundation model ({_BUILTIN_MODELS[name]}); pick another name.")
    if arch not in _FAMILIES and arch not in open_clip.list_models():
        raise ValueError(
            f"open_clip knows no architecture {arch!r}. Add its JSON config with open_clip.add_model_config(path) "
            "first, or use one of open_clip.list_models()."
        )
    FOUNDATION_MODELS[name] = (arch, tag)
    if builtin:
        _BUILTIN_MODELS[name] = (arch, tag)
    if weights is not None:
        _LOCAL_WEIGHTS[name] = Path(weights).expanduser()
    else:
        _LOCAL_WEIGHTS.pop(name, None)


def _force_quick_gelu(arch: str, tag: Optional[str]) -> bool:
    """True when the weights ``tag`` were trained with QuickGELU but ``arch``'s config says GELU (open_clip 3.x
    would only warn and run them with GELU). Open_clip's "-quickgelu" architectures list QuickGELU tags only, so
    the opposite mismatch (the official code's OpenCLIP bug) cannot be asked for by tag."""
    if tag is None:
        return False
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        raise ValueError(
            f"open_clip has no pretrained tag {tag!r} for {arch!r}; its tags: "
            f"{open_clip.list_pretrained_tags_by_model(arch)}."
        )
    arch_quick = bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))
    return bool(cfg.get("quick_gelu", False)) and not arch_quick


def load_foundation_model(name: str, pretrained: Union[str, os.PathLike, None] = None,
                          device: Union[str, torch.device, None] = None) -> "FoundationModel":
    """Load foundation model ``name`` (a key of ``FOUNDATION_MODELS``), frozen, in eval mode.

    ``pretrained=None`` uses the zoo's weights: the open_clip tag (downloaded once, to open_clip's cache) or, for
    lab models, their pre-training by ``lt_utils.lab`` (load-or-train). ``pretrained=<file>`` loads local weights
    instead: an open_clip checkpoint of that architecture, or a file written by ``save_foundation_model``.
    ``device=None`` picks the accelerator when there is one.
    """
    if name not in FOUNDATION_MODELS:
        raise ValueError(f"Unknown foundation model {name!r}; choose one of {', '.join(FOUNDATION_MODELS)}.")
    arch, tag = FOUNDATION_MODELS[name]
    if pretrained is None:
        pretrained = _LOCAL_WEIGHTS.get(name)
    if pretrained is not None:
        pretrained = Path(pretrained).expanduser()
        if not pretrained.is_file():
            raise FileNotFoundError(
                f"No checkpoint file at {pretrained} for {name!r}. Pass the path of a local weights file, or "
                "pretrained=None to use the zoo's weights."
            )
    if arch in _FAMILIES:
        model = _FAMILIES[arch][0](name, tag, pretrained)
    else:
        model = _load_open_clip_model(name, arch, tag, pretrained)
    return model.to(get_device(device)).eval()


def _load_open_clip_model(name, arch, tag, pretrained: Optional[Path]) -> "FoundationModel":
    if pretrained is None and tag is None:
        raise ValueError(f"{name!r} has no pretrained tag; pass pretrained=<local weights file>.")
    saved = _lt_metadata(pretrained) if pretrained is not None else None
    if saved is not None and (saved.get("kind"), saved.get("arch")) != ("open_clip", arch):
        raise ValueError(f"{pretrained} holds a {saved.get('kind')!r} model ({saved.get('arch') or saved.get('name')}),"
                         f" not an open_clip {arch} model as {name!r} needs.")
    force_quick_gelu = _force_quick_gelu(arch, tag)  # the activation follows the weights, even from a file
    try:
        model, train_transform, test_transform = open_clip.create_model_and_transforms(
            arch, pretrained=str(pretrained) if pretrained is not None else tag, force_quick_gelu=force_quick_gelu)
    except Exception as err:
        if pretrained is not None:
            raise RuntimeError(
                f"Could not load {name!r} ({arch}) weights from {pretrained} ({type(err).__name__}: {err}). The "
                "file is corrupted, truncated, a TorchScript archive or holds another architecture; use an "
                "open_clip checkpoint (.bin/.pt state dict or .safetensors) of this architecture."
            ) from err
        raise RuntimeError(
            f"Could not get the {tag!r} weights of {arch} for {name!r} ({type(err).__name__}: {err}). Offline? "
            "Download them once where there is network and pass pretrained=<local file>."
        ) from err
    return FoundationModel.from_open_clip(model, name=name, arch=arch, train_transform=train_transform,
                                          test_transform=test_transform)


def _parse_metadata(path: Path, raw: str) -> dict:
    """Our metadata entry as a dict; a ValueError naming the file when it was damaged or written by other code."""
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"The {_FILE_KEY!r} metadata of {path} is not valid JSON ({err}): the file is damaged or "
                         "was not written by lt_utils; save it again with lt_utils.") from None
    if not isinstance(meta, dict):
        raise ValueError(f"The {_FILE_KEY!r} metadata of {path} is not a JSON object (got {type(meta).__name__}): "
                         "the file was not written by lt_utils; save it again with lt_utils.")
    return meta


def _lt_metadata(path: Path) -> Optional[dict]:
    """Our JSON metadata when ``path`` is a safetensors file written by lt_utils, else None (a ValueError when
    our entry is there but broken)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_FILE_KEY)
    except Exception:
        return None  # not (readable) safetensors: open_clip's loader reports the problem
    return _parse_metadata(path, raw) if raw else None


def read_safetensors(path: Path) -> tuple[dict, dict]:
    """Tensors and our JSON metadata of a safetensors file: a RuntimeError when it cannot be read, a ValueError
    naming the file when its metadata is missing or broken."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise RuntimeError(
            f"Could not read {path} as a safetensors file ({type(err).__name__}: {err}). It is corrupted or "
            "truncated; delete it and save it again."
        ) from err
    if _FILE_KEY not in header:  # bad input, not a broken file: a ValueError, as for broken metadata
        raise ValueError(f"{path} has no lt_utils metadata (no {_FILE_KEY!r} entry): it was not written by "
                         "lt_utils. Pass a file saved by lt_utils (save_checkpoint, save_foundation_model).")
    return tensors, _parse_metadata(path, header[_FILE_KEY])


# --- the foundation model ----------------------------------------------------------------------------------------
def _templates(templates) -> list:
    if templates == "single":
        return [SINGLE_TEMPLATE.format]
    if templates == "ensemble":
        return list(OPENAI_IMAGENET_TEMPLATES)  # CLIP's 80 ImageNet prompts
    if isinstance(templates, (list, tuple)) and templates and all(isinstance(t, str) and "{}" in t
                                                                  for t in templates):
        return [t.format for t in templates]
    raise ValueError(f"templates must be 'single', 'ensemble' or a list of strings with '{{}}', got {templates!r}.")


class FoundationModel(nn.Module):
    """A frozen foundation model: ``visual`` (open_clip ``VisionTransformer`` without its projection), ``proj``
    (buffer [feature_dim, embed_dim]), text features (text tower or, for lab models, class embeddings).

    Attributes: ``name, arch, feature_dim, embed_dim, image_size, mean, std, logit_scale`` (a float),
    ``train_transform / test_transform`` (open_clip's torchvision preprocessing; ``None`` for lab models).
    """

    def __init__(self, name: str, arch: str, visual: VisionTransformer, *, text_model: Optional[nn.Module] = None,
                 tokenizer=None, class_embeddings: Optional[torch.Tensor] = None,
                 classnames: Optional[Sequence[str]] = None, logit_scale: float = 100.0,
                 mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD,
                 train_transform=None, test_transform=None):
        super().__init__()
        if not isinstance(visual, VisionTransformer) or visual.proj is None:
            raise TypeError("FoundationModel needs an open_clip VisionTransformer that still holds its `proj`.")
        self.name, self.arch = name, arch
        self.register_buffer("proj", visual.proj.detach().clone())
        visual.proj = None  # visual(x) now returns the pre-projection feature
        self.visual = visual
        self.text_model, self.tokenizer = text_model, tokenizer
        self.classnames = list(classnames) if classnames is not None else None
        if class_embeddings is not None:
            if classnames is None:
                raise ValueError("class_embeddings need their classnames (one name per row).")
            if class_embeddings.shape != (len(classnames), self.proj.shape[1]):
                raise ValueError(f"class_embeddings has shape {tuple(class_embeddings.shape)}, expected "
                                 f"({len(classnames)}, {self.proj.shape[1]}) for {len(classnames)} class names.")
        self.register_buffer("class_embeddings", class_embeddings)
        self.logit_scale = float(logit_scale)
        self.feature_dim, self.embed_dim = self.proj.shape
        self.image_size = int(visual.image_size[0])
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.train_transform, self.test_transform = train_transform, test_transform
        self.vit_kwargs = None
        self._text_cache = {}
        self.requires_grad_(False)

    @classmethod
    def from_open_clip(cls, model: nn.Module, name: str, arch: str, train_transform=None,
                       test_transform=None) -> "FoundationModel":
        """Wrap an open_clip ``CLIP`` model (e.g. from ``open_clip.create_model``); its text tower stays inside."""
        visual = model.visual
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        mean, std = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), cfg.get("std", open_clip.OPENAI_DATASET_STD)
        model.visual = None  # `model` keeps the text tower only
        return cls(name, arch, visual, text_model=model, tokenizer=open_clip.get_tokenizer(arch),
                   logit_scale=model.logit_scale.exp().item(), mean=mean, std=std,
                   train_transform=train_transform, test_transform=test_transform)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, arch={self.arch!r}, feature_dim={self.feature_dim}, embed_dim={self.embed_dim}"

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-projection image features (B, feature_dim) of normalised images (B, 3, H, W)."""
        return self.visual(x)

    forward = encode_image

    def text_features(self, classnames: Sequence[str], templates="single") -> torch.Tensor:
        """L2-normalised class features (C, embed_dim): the text tower on ``"a photo of a {}."`` ("single") or
        the mean of CLIP's 80 ImageNet prompts ("ensemble"); underscores in names become spaces. Lab models look
        their class embeddings up by name (one per class: ``templates`` does not change them). Results are
        memoised per (classnames, templates), so they survive ``drop_text_tower()``."""
        classnames = list(classnames)
        key = (tuple(classnames), templates if isinstance(templates, str) else tuple(templates))
        if key not in self._text_cache:
            self._text_cache[key] = self._compute_text_features(classnames, templates).detach()
        return self._text_cache[key].to(self.proj.device)

    def _compute_text_features(self, classnames, templates) -> torch.Tensor:
        if self.class_embeddings is not None:
            _templates(templates)  # validate the argument all the same
            index = {c: i for i, c in enumerate(self.classnames)}
            unknown = [c for c in classnames if c not in index]
            if unknown:
                raise KeyError(f"{self.name!r} has no class embedding for {unknown[:5]}; it knows "
                               f"{len(self.classnames)} classes, e.g. {self.classnames[:5]}.")
            rows = self.class_embeddings[[index[c] for c in classnames]]
            return F.normalize(rows.float(), dim=-1)
        if self.text_model is None:
            raise RuntimeError(f"The text tower of {self.name!r} was dropped (drop_text_tower()); reload the model "
                               "to compute text features for new class names.")
        prompts = _templates(templates)
        texts = [p(c.replace("_", " ")) for c in classnames for p in prompts]
        feats = []
        with torch.no_grad():
            for start in tqdm(range(0, len(texts), 256), desc="text features", disable=hide_progress(len(texts) > 1024)):
                tokens = self.tokenizer(texts[start:start + 256]).to(self.proj.device)
                feats.append(self.text_model.encode_text(tokens, normalize=True).float())
        feats = torch.cat(feats).view(len(classnames), len(prompts), -1)
        return F.normalize(feats.mean(dim=1), dim=-1)  # CLIP's prompt ensemble: mean of unit vectors, renormalised

    def drop_text_tower(self) -> None:
        """Free the text tower (about 40% of a CLIP model); text features computed so far stay available."""
        self.text_model = None

    def zero_shot_head(self, classnames: Sequence[str], templates="single") -> "ZeroShotHead":
        """Head mapping pre-projection features to zero-shot logits."""
        return ZeroShotHead(self.proj, self.text_features(classnames, templates), self.logit_scale)

    def zero_shot_classifier(self, classnames: Sequence[str], templates="single") -> "Classifier":
        """``Classifier(visual, zero_shot_head)``: the zero-shot model (shares this model's vision tower)."""
        meta = dict(foundation_model=self.name, arch=self.arch, peft="zero_shot", head="zero_shot",
                    num_classes=len(classnames), classnames=list(classnames))
        return Classifier(self.visual, self.zero_shot_head(classnames, templates), meta=meta,
                          image_size=self.image_size, mean=self.mean, std=self.std)


# --- heads and the classifier ------------------------------------------------------------------------------------
class ZeroShotHead(nn.Module):
    """logits = logit_scale * normalize(f @ proj) @ text.T (no trainable parameters)."""

    def __init__(self, proj: torch.Tensor, text_features: torch.Tensor, logit_scale: float):
        super().__init__()
        self.register_buffer("proj", proj.detach().clone())
        self.register_buffer("text_features", F.normalize(text_features.detach().float(), dim=-1))
        self.logit_scale = float(logit_scale)

    def forward(self, features):
        image = F.normalize(features @ self.proj.to(features.dtype), dim=-1)
        return self.logit_scale * image @ self.text_features.to(image.dtype).T


class CosineHead(nn.Module):
    """Cosine classifier, no bias: logits = scale * cos(feature, weight row)."""

    def __init__(self, in_dim: int, num_classes: int, scale: float = 25.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, in_dim) * in_dim ** -0.5)
        self.scale = float(scale)

    @classmethod
    def from_text_features(cls, text_features: torch.Tensor, proj: torch.Tensor, scale: float = 25.0):
        """LIFT's initialisation: rows = normalize(text @ proj.T), the class text features mapped back into the
        pre-projection space, so the head starts close to the zero-shot classifier."""
        head = cls(proj.shape[0], text_features.shape[0], scale).to(proj.device)
        with torch.no_grad():
            head.weight.copy_(F.normalize(text_features.float() @ proj.float().T, dim=-1))
        return head

    def forward(self, features):
        return self.scale * F.linear(F.normalize(features, dim=-1), F.normalize(self.weight, dim=-1).to(features.dtype))


class LinearHead(nn.Linear):
    """A plain linear classifier (with bias), for comparison with the cosine head."""

    def __init__(self, in_dim: int, num_classes: int, bias: bool = True):
        super().__init__(in_dim, num_classes, bias=bias)

    @classmethod
    def from_text_features(cls, text_features: torch.Tensor, proj: torch.Tensor):
        """Rows = normalize(text @ proj.T), bias 0 (the same directions as the cosine head)."""
        head = cls(proj.shape[0], text_features.shape[0]).to(proj.device)
        with torch.no_grad():
            head.weight.copy_(F.normalize(text_features.float() @ proj.float().T, dim=-1))
            head.bias.zero_()
        return head


class Classifier(nn.Module):
    """``backbone`` (vision tower -> pre-projection features) + ``head`` (features -> logits); ``meta`` describes
    it (foundation model, architecture, PEFT, head, classes) for checkpoints; ``image_size, mean, std`` (copied
    from the foundation model) tell evaluation code how to preprocess images."""

    def __init__(self, backbone: nn.Module, head: nn.Module, meta: Optional[dict] = None, *,
                 image_size: Optional[int] = None, mean=None, std=None):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.meta = dict(meta or {})
        self.image_size, self.mean, self.std = image_size, mean, std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-projection features of the (possibly PEFT-modified) backbone."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def trainable_state_dict(self) -> dict:
        """The parameters that train (adapters, prompts, head, ...), detached."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}


def build_classifier(foundation_model: FoundationModel, classnames: Sequence[str], peft: str = "adaptformer",
                     head: str = "cosine", templates="single", copy: bool = True, **peft_kw) -> Classifier:
    """A classifier to fine-tune: PEFT ``peft`` in the vision tower (everything else frozen) and a ``head``
    ("cosine" or "linear") initialised from the class text features.

    ``copy=True`` (default) deep-copies the vision tower, so ``foundation_model`` stays untouched and can serve
    zero-shot or another seed; ``copy=False`` modifies its ``visual`` in place (saves memory for ViT-B/16).
    ``peft_kw`` go to ``apply_peft`` (``bottleneck``, ``rank``, ``num_tokens``).
    """
    if head not in HEADS:
        raise ValueError(f"Unknown head {head!r}; choose one of {', '.join(HEADS)}.")
    classnames = list(classnames)
    text = foundation_model.text_features(classnames, templates)
    visual = deepcopy(foundation_model.visual) if copy else foundation_model.visual
    info = apply_peft(visual, peft, num_classes=len(classnames), **peft_kw)
    head_cls = CosineHead if head == "cosine" else LinearHead
    head_module = head_cls.from_text_features(text, foundation_model.proj).requires_grad_(True)
    meta = dict(foundation_model=foundation_model.name, arch=foundation_model.arch, peft=peft, head=head,
                num_classes=len(classnames), feature_dim=foundation_model.feature_dim, classnames=classnames,
                peft_config={k: v for k, v in info.items() if k not in ("method", "trainable", "total")})
    return Classifier(visual, head_module, meta=meta, image_size=foundation_model.image_size,
                      mean=foundation_model.mean, std=foundation_model.std)


# --- checkpoints -------------------------------------------------------------------------------------------------
_CHECKED_META = ("foundation_model", "arch", "peft", "peft_config", "head", "num_classes", "feature_dim")


def write_safetensors(tensors: dict, path: Path, meta: dict) -> Path:
    """Write ``tensors`` and our JSON metadata ``meta`` to a safetensors file atomically (``read_safetensors``
    reads both back)."""
    try:
        text = json.dumps(meta)
    except TypeError as err:
        raise ValueError(f"Checkpoint metadata must be JSON-able (numbers, strings, lists, dicts): {err}") from err
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={_FILE_KEY: text}))


def save_checkpoint(path: Union[str, os.PathLike], module: nn.Module, meta: Optional[dict] = None) -> Path:
    """Save the trainable parameters of ``module`` (adapters + head) to a safetensors file, atomically, with JSON
    metadata: ``module.meta`` (if any) updated by ``meta``, and every parameter's name and shape."""
    tensors = {n: p for n, p in module.named_parameters() if p.requires_grad}
    if not tensors:
        raise ValueError("The module has no trainable parameters: nothing to save.")
    info = dict(kind="checkpoint", meta={**getattr(module, "meta", {}), **(meta or {})},
                params={n: list(p.shape) for n, p in tensors.items()})
    return write_safetensors(tensors, Path(path), info)


def _describe(meta: dict) -> str:
    return (f"{meta.get('num_classes', '?')} classes, foundation model {meta.get('foundation_model', '?')} "
            f"({meta.get('arch', '?')}), peft {meta.get('peft', '?')} {meta.get('peft_config', '')}, "
            f"head {meta.get('head', '?')}")


def load_checkpoint(path: Union[str, os.PathLike], module: nn.Module) -> dict:
    """Load a ``save_checkpoint`` file into the trainable parameters of ``module``; returns the file's metadata.

    Refuses (``ValueError``) a checkpoint of another foundation model, PEFT, head, class count or class list, or
    with other parameter names/shapes, saying what the file holds and what the model expects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    tensors, info = read_safetensors(path)
    if info.get("kind") != "checkpoint":
        raise ValueError(f"{path} holds a {info.get('kind')!r} file, not a save_checkpoint checkpoint.")
    saved, expected = info.get("meta", {}), getattr(module, "meta", {})
    problems = [f"{k}: file {saved[k]!r} vs model {expected[k]!r}" for k in _CHECKED_META
                if k in saved and k in expected and saved[k] != expected[k]]
    if "classnames" in saved and "classnames" in expected and saved["classnames"] != expected["classnames"]:
        problems.append("the class names (or their order) differ")
    own = {n: p for n, p in module.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(own.keys() - tensors.keys()), sorted(tensors.keys() - own.keys())
    wrong = [f"{n} {tuple(tensors[n].shape)} vs {tuple(p.shape)}" for n, p in own.items()
             if n in tensors and tensors[n].shape != p.shape]
    for label, items in (("missing in file", missing), ("unexpected in file", unexpected), ("shape", wrong)):
        if items:
            problems.append(f"{label}: {items[:3]}{' ...' if len(items) > 3 else ''}")
    if problems:
        raise ValueError(f"{path} holds a checkpoint for {_describe(saved)}, but the model expects "
                         f"{_describe(expected)} ({'; '.join(problems)}). Build the classifier the checkpoint "
                         "was trained with.")
    with torch.no_grad():
        for n, p in own.items():
            p.copy_(tensors[n])
    return saved


def save_foundation_model(path: Union[str, os.PathLike], model: FoundationModel) -> Path:
    """Save a whole foundation model (all weights) to ``path`` (.safetensors), atomically; reload it with
    ``load_foundation_model(model.name, pretrained=path)``. Meant for lab and tiny models. Open_clip models are
    written in open_clip's own key layout, so ``open_clip.create_model(arch, pretrained=path)`` reads them too."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"Use a .safetensors file name (open_clip picks its loader by suffix), got {path.name}.")
    if getattr(model.visual, "peft_method", None) is not None:
        raise ValueError("This foundation model's vision tower carries PEFT (build_classifier(copy=False)); "
                         "save the foundation model before fine-tuning.")
    tensors = {f"visual.{k}": v for k, v in model.visual.state_dict().items()}
    tensors["visual.proj"] = model.proj
    if model.class_embeddings is not None:
        tensors["class_embeddings"] = model.class_embeddings
        vit_kwargs = model.vit_kwargs
        try:
            json.dumps(vit_kwargs)
        except TypeError:
            vit_kwargs = None  # not JSON-able: the lab's loader falls back to its LAB_VIT
        meta = dict(kind="lab", name=model.name, classnames=model.classnames, logit_scale=model.logit_scale,
                    mean=model.mean, std=model.std, vit_kwargs=vit_kwargs)
    else:
        if model.text_model is None:
            raise RuntimeError("The text tower was dropped; reload the model before saving it.")
        tensors.update(model.text_model.state_dict())
        meta = dict(kind="open_clip", name=model.name, arch=model.arch)
    return write_safetensors(tensors, path, meta)
