"""The two TSP quality heads (paper section 3, Figure 1).

Each head predicts, for one RoI, the IoU of the model's own prediction with the ground truth:
``BoxIoUHead`` on the RCNN box branch (b), ``MaskIoUHead`` on the mask branch (m). Architecture as
written in the paper: two 3x3 convolutions (stride 2, padding 1), global average pooling, one
fully connected layer, sigmoid; the output is one scalar per RoI.
"""

from __future__ import annotations

import torch
from torch import nn


class IoUHead(nn.Module):
    """conv3x3/s2 -> ReLU -> conv3x3/s2 -> ReLU -> global average pool -> FC -> sigmoid.

    Args:
        in_channels: channels of the RoI features (the FPN's ``out_channels``).
        hidden_channels: channels of both convolutions.

    Input ``x`` (FloatTensor[N, in_channels, R, R]); output FloatTensor[N] in [0, 1].
    """

    def __init__(self, in_channels: int, hidden_channels: int = 256) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden_channels, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(hidden_channels, hidden_channels, kernel_size=3, stride=2, padding=1)
        self.fc = nn.Linear(hidden_channels, 1)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = x.mean(dim=(2, 3))
        return torch.sigmoid(self.fc(x)).squeeze(1)


class BoxIoUHead(IoUHead):
    """Predicts b: the IoU of the regressed box with its ground-truth box.

    Input: RoIAlign features of the box branch (FloatTensor[N, C, 7, 7] by default).
    """


class MaskIoUHead(IoUHead):
    """Predicts m: the IoU of the mask binarized at the model's ``mask_threshold`` with its ground-truth mask.

    Input: the mask branch's RoIAlign features, the same input as the mask head
    (FloatTensor[N, C, 14, 14] by default).
    """
