"""The baseline: a plain timm + torch training loop, what a user writes in 40 lines instead of using vitkit.

Same model (timm ``vit_tiny_patch16_224`` with the given ``img_size``/``patch_size``/``depth``, from scratch), image
size, epochs and batch size as vitkit's run; AdamW, OneCycle, a linear head; train: random resized crop (scale 0.5-1)
+ flip, eval: resize the whole image. Scores the last epoch's model on the test split. Prints one JSON line.

    python benchmarks/quality/plain.py --task classes --data DIR --epochs 15 --img 64 --patch 8 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics.functional import r2_score
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_f1_score,
    multilabel_average_precision,
)
from torchvision import datasets
from torchvision import transforms as T


def read(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


class Rows(torch.utils.data.Dataset):
    """CSV rows of one split: (image, target vector)."""

    def __init__(self, csv_path: Path, split: str, transform, columns=None, labels=None):
        rows = [r for r in read(csv_path) if r["split"] == split]
        self.paths = [csv_path.parent / r["path"] for r in rows]
        if labels is not None:
            self.targets = [[float(n in r["labels"].split("|")) for n in labels] for r in rows]
        else:
            self.targets = [[float(r[c]) for c in columns] for r in rows]
        self.transform = transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = Image.open(self.paths[i]).convert("RGB")
        return self.transform(image), torch.tensor(self.targets[i])


def main() -> None:
    parser = argparse.ArgumentParser()
    for name, kind in (("task", str), ("data", Path), ("epochs", int), ("img", int), ("patch", int), ("seed", int)):
        parser.add_argument(f"--{name}", type=kind, required=True)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--pool", default="token", help="timm ViT global_pool: token or avg")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--balanced", action="store_true", help="torch's WeightedRandomSampler (inverse frequency)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    crop = T.RandomResizedCrop(args.img, scale=(0.5, 1.0))
    train_tf = T.Compose([crop, T.RandomHorizontalFlip(), T.ToTensor(), norm])
    if args.task == "regression":  # the target is a fraction of the whole image: no crop
        train_tf = T.Compose([T.Resize((args.img, args.img)), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    eval_tf = T.Compose([T.Resize((args.img, args.img)), T.ToTensor(), norm])
    if args.task in ("classes", "longtail"):
        train, test = (datasets.ImageFolder(args.data / s, tf) for s, tf in (("train", train_tf), ("test", eval_tf)))
        outputs = len(train.classes)
    elif args.task == "multilabel":
        names = sorted({n for r in read(args.data) for n in r["labels"].split("|") if n})
        train, test = (Rows(args.data, s, tf, labels=names) for s, tf in (("train", train_tf), ("test", eval_tf)))
        outputs = len(names)
    else:
        columns = [c for c in read(args.data)[0] if c not in ("path", "split")]
        train, test = (Rows(args.data, s, tf, columns=columns) for s, tf in (("train", train_tf), ("test", eval_tf)))
        outputs = len(columns)
    sampler = None
    if args.balanced:
        counts = torch.bincount(torch.tensor(train.targets))
        weights = (1.0 / counts.float())[torch.tensor(train.targets)]
        sampler = torch.utils.data.WeightedRandomSampler(weights, len(train), replacement=True)
    loader = torch.utils.data.DataLoader(train, args.batch, shuffle=sampler is None, sampler=sampler, num_workers=2,
                                         drop_last=False, persistent_workers=True)  # fmt: skip
    model = timm.create_model("vit_tiny_patch16_224", num_classes=outputs, img_size=args.img,
                              patch_size=args.patch, depth=args.depth, global_pool=args.pool)  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.epochs * len(loader))
    for _ in range(args.epochs):
        model.train()
        for images, targets in loader:
            out = model(images)
            if args.task in ("classes", "longtail"):
                loss = F.cross_entropy(out, targets)
            elif args.task == "multilabel":
                loss = F.binary_cross_entropy_with_logits(out, targets)
            else:
                loss = F.mse_loss(out, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        pairs = [(model(x), y) for x, y in torch.utils.data.DataLoader(test, 64, num_workers=2)]
    out, y = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    if args.task == "classes":
        score = {"acc": float(multiclass_accuracy(out, y, outputs, average="micro"))}
    elif args.task == "longtail":
        score = {"f1_macro": float(multiclass_f1_score(out, y, outputs, average="macro"))}
    elif args.task == "multilabel":
        score = {"map": float(multilabel_average_precision(out.sigmoid(), y.long(), outputs))}
    else:
        score = {"r2": float(r2_score(out, y))}
    print(json.dumps(score))


if __name__ == "__main__":
    main()
