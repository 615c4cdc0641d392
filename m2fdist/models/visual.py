"""Visual feature extractor (DESIGN §3): faces and scene over an utterance's 15 frames.

Face branch: MTCNN (facenet-pytorch, its bundled weights) finds the faces of each frame; each face crop
goes through the face extractor; the embeddings are weighted by their box area normalised to [0, 1]
and summed per frame (a frame with no face gives zeros, never NaN); frames are max-pooled. Scene
branch: the whole frame through the scene extractor, max-pooled. The two are concatenated (D_V).

MTCNN is kept out of the module tree: it is never trained, and under ZeRO its weights must not be
partitioned or put in the optimiser. Crops are cut with ``roi_align`` from each frame's real area only,
so a frame's result never depends on the padding that batched it with larger frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops import roi_align


@dataclass
class VisualConfig:
    embed_dim: int = 300
    branches: str = "face+scene"  # or "face" / "scene": the paper's face-only and scene-only video rows
    face_backbone: str = "resnet18"  # or "inception_resnet_v1" (facenet's; random init, CASIA-WebFace to train)
    face_size: int = 112
    scene_size: int = 224
    min_face_prob: float = 0.9
    min_face_size: int = 20

    def __post_init__(self) -> None:
        if self.branches not in ("face+scene", "face", "scene"):
            raise ValueError(f"visual branches must be face+scene, face or scene, not {self.branches!r}")
        if self.face_backbone not in ("resnet18", "inception_resnet_v1"):
            raise ValueError(f"face_backbone must be resnet18 or inception_resnet_v1, not {self.face_backbone!r}")

    @property
    def out_dim(self) -> int:
        return self.embed_dim * (2 if self.branches == "face+scene" else 1)


class Embedder(nn.Module):
    """Image batch [N, 3, S, S] in [0, 1] → [N, embed_dim] unit vectors (the triplet-trained extractor)."""

    def __init__(self, embed_dim: int, backbone: str = "resnet18"):
        super().__init__()
        if backbone == "resnet18":
            net = torchvision.models.resnet18(weights=None)
            net.fc = nn.Identity()
            width = 512
        else:
            from facenet_pytorch import InceptionResnetV1

            net = InceptionResnetV1(pretrained=None, classify=False)
            width = 512
        self.backbone = net
        self.proj = nn.Linear(width, embed_dim)

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.proj(self.backbone((images - 0.5) / 0.5)), dim=-1)


class FaceDetector:
    """Batched MTCNN on the frames' device; returns per frame boxes [k, 4] (x1, y1, x2, y2) and probs."""

    def __init__(self, min_prob: float = 0.9, min_face_size: int = 20):
        self.min_prob, self.min_face_size = min_prob, min_face_size
        self._nets: dict[str, object] = {}

    def _net(self, device: torch.device):
        key = str(device)
        if key not in self._nets:
            from facenet_pytorch import MTCNN

            self._nets[key] = MTCNN(keep_all=True, device=device, min_face_size=self.min_face_size).eval()
        return self._nets[key]

    @torch.no_grad()
    def __call__(self, frames: Tensor, frame_hw: Tensor) -> list[Tensor]:
        """frames uint8 [N, H, W, 3] (padded), frame_hw [N, 2] → N tensors of boxes, clamped to the real area."""
        if frames.shape[0] == 0:
            return []
        boxes, probs = self._net(frames.device).detect(frames.float())
        out = []
        for i in range(frames.shape[0]):
            h, w = (int(v) for v in frame_hw[i])
            if boxes[i] is None:
                out.append(torch.zeros((0, 4), device=frames.device))
                continue
            b = torch.as_tensor(np.asarray(boxes[i], dtype=np.float32), device=frames.device).reshape(-1, 4)
            p = torch.as_tensor(np.asarray(probs[i], dtype=np.float32), device=frames.device).reshape(-1)
            b = b[p >= self.min_prob]
            b[:, 0::2] = b[:, 0::2].clamp(0.5, w - 0.5)  # inside the real area (see scene_features)
            b[:, 1::2] = b[:, 1::2].clamp(0.5, h - 0.5)
            keep = (b[:, 2] - b[:, 0] >= 2) & (b[:, 3] - b[:, 1] >= 2)
            out.append(b[keep])
        return out


class VisualExtractor(nn.Module):
    def __init__(self, config: VisualConfig | None = None):
        super().__init__()
        self.config = c = config or VisualConfig()
        self.face = Embedder(c.embed_dim, c.face_backbone) if "face" in c.branches else None
        self.scene = Embedder(c.embed_dim) if "scene" in c.branches else None
        self.detector = FaceDetector(c.min_face_prob, c.min_face_size)

    def detect(self, frames: Tensor, frame_hw: Tensor) -> list[list[Tensor]]:
        """Boxes per utterance per frame: [B][T] tensors [k, 4]. Pack-time boxes can stand in for this."""
        b, t = frames.shape[:2]
        flat = self.detector(frames.reshape(b * t, *frames.shape[2:]), frame_hw.repeat_interleave(t, dim=0))
        return [flat[i * t : (i + 1) * t] for i in range(b)]

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
