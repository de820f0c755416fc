"""Real-vs-real FID/KID floor of a dataset and the cost of Inception features on this machine.

    python benchmarks/fid_floor.py                      # MNIST, first 1000 train vs first 1000 test images
    python benchmarks/fid_floor.py --n 500 --data fashion_mnist --out /tmp/floor.json

Uses the offline TF-FID Inception weights (genbench.metrics.inception provider order) and prints FID, KID
(mean +- std), precision/recall, and seconds per 1000 images of feature extraction. The features are not
read from the reference cache, so the timing is real; they are written to it afterwards.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from genbench.bench.config import EvalConfig
from genbench.data.datamodule import GenDataModule
from genbench.metrics import fidelity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--weights", default=None, help="explicit Inception weights path")
    parser.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args()

    dm = GenDataModule(args.data)
    train = dm.split("train")[0][: args.n]
    test = dm.split("test")[0][: args.n]
    extractor = fidelity.InceptionExtractor(args.weights, allow_download=False)

    start = time.perf_counter()
    f_train, _ = fidelity.extract_features(train, extractor, dm.num_levels, args.batch_size, progress=True,
                                           desc="train features")
    f_test, _ = fidelity.extract_features(test, extractor, dm.num_levels, args.batch_size, progress=True,
                                          desc="test features")
    feature_s = time.perf_counter() - start
    n_images = len(train) + len(test)

    fid = fidelity.fid_from_features(f_train, f_test)
    kid_subset = EvalConfig().kid_subset(args.n)  # the harness's rule: min(1000, n // 2)
    kid_mean, kid_std = fidelity.kid_from_features(f_train, f_test, subset_size=kid_subset)
    precision, recall = fidelity.precision_recall(f_train, f_test)
    for images, split, feats in ((train, "train", f_train), (test, "test", f_test)):
        path = fidelity.reference_cache_path(args.data, split, 0, len(images), extractor,
                                             fidelity.images_digest(images))
        if not path.exists():
            fidelity.save_reference_features(feats, path, extractor)

    result = {
        "data": args.data,
        "protocol": f"train[0:{len(train)}] vs test[0:{len(test)}]",
        "n": args.n,
        "fid": fid,
        "kid": kid_mean,
        "kid_std": kid_std,
        "kid_subset_size": kid_subset,
        "precision": precision,
        "recall": recall,
        "feature_seconds_per_1000_images": 1000.0 * feature_s / n_images,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        **extractor.describe(),
    }
    print(json.dumps(result, indent=2))
    print(f"FID@{args.n} train vs test = {fid:.3f}; KID = {kid_mean:.5f} +- {kid_std:.5f}; "
          f"Inception features: {result['feature_seconds_per_1000_images']:.1f} s per 1000 images")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
