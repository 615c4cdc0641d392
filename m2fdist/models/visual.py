"""Visual feature extractor: faces and scene over an utterance's 15 frames.

Face branch: MTCNN (facenet-pytorch, its bundled weights) finds the faces of each frame; each face crop
goes through the face extractor; the embeddings are weighted by their box area normalised to [0, 1]
and summed per frame (a frame with no face gives zeros, never NaN); frames are max-pooled. Scene
branch: the whole frame through the scene extractor, max-pooled. The two are concatenated (D_V).

MTCNN is kept out of the module tree: it is never trained, and under ZeRO its weights must not be
partitioned or put in the optimiser. Crops are cut with ``roi_align`` from each frame's real area only,
so a frame's result never depends on the padding that batched it with larger frames. Boxes found once by
``m2fdist faces`` (:mod:`m2fdist.faces`) can stand in for MTCNN (``visual.faces``).

The backbones start from random weights, torchvision's ImageNet weights, facenet-pytorch's face weights
(``casia-webface`` / ``vggface2``, through its own download API) or a local weights file
(``visual.scene_init`` / ``visual.face_init``); :func:`load_init` loads them without unpickling anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m2fdist.format.exports import load_weights


def roi_align(images: Tensor, rois: Tensor, size: tuple[int, int], aligned: bool) -> Tensor:
    """torchvision.ops.roi_align, torchvision imported at first use (here and below, on purpose): its import is
    ~3 s of CPU on 2 cores, and every rank imports this module (config.schema holds VisualConfig) though only
    the visual stage and extraction build a visual model."""
    from torchvision.ops import roi_align as op

    return op(images, rois, size, aligned=aligned)


@dataclass
class VisualConfig:
    embed_dim: int = 300  # per branch (face, scene); D_V is twice this with both branches
    branches: str = "face+scene"  # or "face" / "scene": the paper's face-only and scene-only video rows
    face_backbone: str = "resnet18"  # or "inception_resnet_v1" (facenet's; random init, CASIA-WebFace to train)
    face_size: int = 112  # face crops resized to this square side
    scene_size: int = 224  # whole frames resized to this square side for the scene branch
    min_face_prob: float = 0.9  # MTCNN faces less probable than this are ignored
    min_face_size: int = 20  # MTCNN's smallest face, in pixels
    # Initial weights of each backbone: none (random), imagenet (torchvision, resnet18 only), casia-webface /
    # vggface2 (facenet-pytorch, inception_resnet_v1 only), or a local .safetensors / .pt / .pth file.
    face_init: str = "none"
    scene_init: str = "none"  # the scene backbone's initial weights (as face_init, resnet18 names)
    # Face boxes: auto (those `m2fdist faces` stored beside the shards when they match, MTCNN otherwise),
    # mtcnn (MTCNN on every batch), or a face-set folder that must cover the shards.
    faces: str = "auto"

    def __post_init__(self) -> None:
        if self.branches not in ("face+scene", "face", "scene"):
            raise ValueError(f"visual branches must be face+scene, face or scene, not {self.branches!r}")
        if self.face_backbone not in ("resnet18", "inception_resnet_v1"):
            raise ValueError(f"face_backbone must be resnet18 or inception_resnet_v1, not {self.face_backbone!r}")
        check_init("visual.face_init", self.face_init, self.face_backbone)
        check_init("visual.scene_init", self.scene_init, "resnet18")

    @property
    def out_dim(self) -> int:
        return self.embed_dim * (2 if self.branches == "face+scene" else 1)


WEIGHT_FILES = (".safetensors", ".pt", ".pth", ".bin")
NAMED_INITS = {"resnet18": ("none", "imagenet"), "inception_resnet_v1": ("none", "casia-webface", "vggface2")}
# What each backbone's weights were trained on: torchvision's ImageNet statistics; facenet's (x - 127.5) / 128.
MEAN_STD = {"resnet18": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            "inception_resnet_v1": ((0.5, 0.5, 0.5), (128 / 255, 128 / 255, 128 / 255))}


def check_init(key: str, value: str, backbone: str) -> None:
    """A named init that fits the backbone, or a path to a weights file (its existence is checked on load)."""
    if value in NAMED_INITS[backbone] or value.endswith(WEIGHT_FILES):
        return
    raise ValueError(f"{key}={value!r}: use one of {', '.join(NAMED_INITS[backbone])} for {backbone}, or a "
                     f"local weights file ({', '.join(WEIGHT_FILES)})")


def read_weights(path: Path) -> dict[str, Tensor]:
    """A state dict from a local file without running pickled code: safetensors, or torch.load(weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        return load_weights(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError and friends: the file holds more than tensors
        raise ValueError(f"{path}: not a plain state dict of tensors (refused to unpickle it: "
                         f"{str(e).splitlines()[0][:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return state


def download_weights(name: str) -> dict[str, Tensor]:
    """Weights through the libraries' own download APIs (cached in the torch hub folder after the first)."""
    if name == "imagenet":
        import torchvision  # here, not at the top: see roi_align

        return torchvision.models.ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    # here, not at the top: facenet-pytorch only where a face branch is built
    from facenet_pytorch import InceptionResnetV1

    return InceptionResnetV1(pretrained=name, classify=False).state_dict()


def load_init(backbone: nn.Module, source: str) -> None:
    """Load ``source`` (a named init or a file) into ``backbone``; classifier heads (fc, logits) are dropped.

    A file may hold the bare backbone's state dict (torchvision's or facenet's format) or one whose keys
    start with ``backbone.`` (an Embedder's). Every backbone weight must be there: a partial file is an error.
    """
    if source == "none":
        return
    state = download_weights(source) if "." not in source else read_weights(Path(source))
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "logits."))}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not fit the backbone (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]})")


class Embedder(nn.Module):
    """Image batch [N, 3, S, S] in [0, 1] → [N, embed_dim] unit vectors (the triplet-trained extractor)."""
    def __init__(self, embed_dim: int, backbone: str = "resnet18"):
        super().__init__()
        if backbone == "resnet18":
            import torchvision  # here, not at the top: see roi_align

            net = torchvision.models.resnet18(weights=None)
            net.fc = nn.Identity()
            width = 512
        else:
            # here, not at the top: facenet-pytorch only where a face branch is built
            from facenet_pytorch import InceptionResnetV1

            net = InceptionResnetV1(pretrained=None, classify=False)
            width = 512
        self.backbone = net
        self.proj = nn.Linear(width, embed_dim)
        mean, std = MEAN_STD[backbone]
        # plain attributes, not buffers: exports and checkpoints stay as they were, and bf16 never rounds them
        self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]

    def forward(self, images: Tensor) -> Tensor:
        x = (images - self.mean.to(images)) / self.std.to(images)
        return F.normalize(self.proj(self.backbone(x)), dim=-1)


class FaceDetector:
    """Batched MTCNN on the frames' device; returns per frame boxes [k, 4] (x1, y1, x2, y2) and probs."""
    def __init__(self, min_prob: float = 0.9, min_face_size: int = 20):
        self.min_prob, self.min_face_size = min_prob, min_face_size
        self._nets: dict[str, object] = {}

    def _net(self, device: torch.device):
        key = str(device)
        if key not in self._nets:
            # here, not at the top: facenet-pytorch only where a face branch is built
            from facenet_pytorch import MTCNN

            self._nets[key] = MTCNN(keep_all=True, device=device, min_face_size=self.min_face_size).eval()
        return self._nets[key]

    @torch.no_grad()
    def scored(self, frames: Tensor, frame_hw: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Every face MTCNN returns, whatever its probability: N pairs (boxes [k, 4] in the real area, probs [k])."""
        if frames.shape[0] == 0:
            return []
        boxes, probs = self._net(frames.device).detect(frames.float())
        out = []
        for i in range(frames.shape[0]):
            h, w = (int(v) for v in frame_hw[i])
            if boxes[i] is None:
                out.append((torch.zeros((0, 4), device=frames.device), torch.zeros(0, device=frames.device)))
                continue
            b = torch.as_tensor(np.asarray(boxes[i], dtype=np.float32), device=frames.device).reshape(-1, 4)
            p = torch.as_tensor(np.asarray(probs[i], dtype=np.float32), device=frames.device).reshape(-1)
            b[:, 0::2] = b[:, 0::2].clamp(0.5, w - 0.5)  # inside the real area (see scene_features)
            b[:, 1::2] = b[:, 1::2].clamp(0.5, h - 0.5)
            keep = (b[:, 2] - b[:, 0] >= 2) & (b[:, 3] - b[:, 1] >= 2)
            out.append((b[keep], p[keep]))
        return out

    def scored_clips(self, clips: list[Tensor],
                     device: torch.device | None = None) -> list[list[tuple[Tensor, Tensor]]]:
        """MTCNN over clips [T, H, W, 3] (each at its real size), one clip at a time: per clip, per frame, every
        face's (boxes [k, 4], probs [k]) on the CPU.

        One clip alone, never padded nor batched with others: MTCNN's image pyramid depends on the image size,
        and its batched convolutions on the batch (a face feature moved by 1e-3 between chunks of 16 and of 1
        on CPU). So a clip's boxes depend on the clip only, and training, extraction, the face pass and
        prediction find the same faces in the same frames.
        """
        out = []
        for clip in clips:
            frames = torch.as_tensor(clip).to(device) if device is not None else torch.as_tensor(clip)
            hw = torch.tensor([[int(frames.shape[1]), int(frames.shape[2])]] * len(frames))
            out.append([(b.cpu(), p.cpu()) for b, p in self.scored(frames, hw)])
        return out

    def __call__(self, frames: Tensor, frame_hw: Tensor) -> list[Tensor]:
        """frames uint8 [N, H, W, 3] (padded), frame_hw [N, 2] → N tensors of boxes with p >= min_prob."""
        return [b[p >= self.min_prob] for b, p in self.scored(frames, frame_hw)]


class VisualExtractor(nn.Module):
    def __init__(self, config: VisualConfig | None = None):
        super().__init__()
        self.config = c = config or VisualConfig()
        self.face = Embedder(c.embed_dim, c.face_backbone) if "face" in c.branches else None
        self.scene = Embedder(c.embed_dim) if "scene" in c.branches else None
        self.detector = FaceDetector(c.min_face_prob, c.min_face_size)

    def load_pretrained(self) -> None:
        """Initial backbone weights from ``face_init`` / ``scene_init``; called before training, never on export."""
        if self.face is not None:
            load_init(self.face.backbone, self.config.face_init)
        if self.scene is not None:
            load_init(self.scene.backbone, self.config.scene_init)

    def detect(self, frames: Tensor, frame_hw: Tensor) -> list[list[Tensor]]:
        """Boxes per utterance per frame: [B][T] tensors [k, 4], on the frames' device; each clip is detected
        alone at its real size (:meth:`FaceDetector.scored_clips`). Stored boxes (m2fdist.faces) can stand in."""
        clips = [frames[i, :, : int(h), : int(w)] for i, (h, w) in enumerate(frame_hw.tolist())]
        found = self.detector.scored_clips(clips)
        return [[b[p >= self.detector.min_prob].to(frames.device) for b, p in clip] for clip in found]

    def face_features(self, frames: Tensor, boxes: list[list[Tensor]], frame_hw: Tensor) -> Tensor:
        """Area-weighted sum of face embeddings per frame, max-pooled over frames: [B, embed_dim]."""
        b, t = frames.shape[:2]
        images = frames.reshape(b * t, *frames.shape[2:]).permute(0, 3, 1, 2).float() / 255
        rois, weights, owner = [], [], []
        for i in range(b):
            area = float(frame_hw[i, 0] * frame_hw[i, 1])
            for j in range(t):
                bx = boxes[i][j].to(images.device, torch.float32)
                if len(bx):
                    idx = torch.full((len(bx), 1), float(i * t + j), device=images.device)
                    rois.append(torch.cat([idx, bx], dim=1))
                    weights.append(((bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1]) / area).clamp(0, 1))
                    owner += [i * t + j] * len(bx)
        per_frame = images.new_zeros((b * t, self.config.embed_dim))
        if rois:
            size = self.config.face_size
            crops = roi_align(images, torch.cat(rois), (size, size), aligned=True)
            emb = self.face(crops.to(self.face.proj.weight.dtype)).float() * torch.cat(weights)[:, None]
            per_frame = per_frame.index_add(0, torch.tensor(owner, device=images.device), emb)
        return per_frame.reshape(b, t, -1).amax(dim=1)

    def scene_features(self, frames: Tensor, frame_hw: Tensor) -> Tensor:
        """Whole (real-area) frames through the scene extractor, max-pooled over frames: [B, embed_dim]."""
        b, t = frames.shape[:2]
        images = frames.reshape(b * t, *frames.shape[2:]).permute(0, 3, 1, 2).float() / 255
        hw = frame_hw.repeat_interleave(t, dim=0).to(images.device, torch.float32)
        # Pixel centres 0 … w-1 (roi_align's aligned coordinates are shifted by half a pixel): sampling
        # never reaches the padding to the right or below the real frame.
        half = torch.full_like(hw[:, :1], 0.5)
        rois = torch.cat([torch.arange(b * t, device=images.device, dtype=torch.float32)[:, None],
                          half, half, hw[:, 1:2] - 0.5, hw[:, 0:1] - 0.5], dim=1)
        size = self.config.scene_size
        crops = roi_align(images, rois, (size, size), aligned=True)
        return self.scene(crops.to(self.scene.proj.weight.dtype)).float().reshape(b, t, -1).amax(dim=1)

    def forward(self, frames: Tensor, frame_hw: Tensor, boxes: list[list[Tensor]] | None = None) -> Tensor:
        """frames uint8 [B, T, H, W, 3], frame_hw [B, 2] → D_V features [B, out_dim]."""
        parts = []
        if self.face is not None:
            if boxes is None:
                boxes = self.detect(frames, frame_hw)
            parts.append(self.face_features(frames, boxes, frame_hw))
        if self.scene is not None:
            parts.append(self.scene_features(frames, frame_hw))
        return torch.cat(parts, dim=-1)
