"""A class-sorted image folder larger than the shuffle buffer: windowed order vs drawn order.

Fashion-MNIST's 60,000 training images written as PNGs, one folder a class (test: its
10,000), from Debian's dataset-fashion-mnist. The shuffle buffer is set to 1,000 images, as a
folder of 224x224 images larger than about 3,500 gets (2 GiB). Per seed, an MLP (64 hidden
units) trains 3 epochs with SGD twice: on the files' order mixed in the buffer (what
`training_batches` read before 7ae4c45), and on the order the folder draws each epoch
(`shuffled_train`, since). Appends each run's mean number of classes in a batch (first 200
batches) and its test accuracy to rows.jsonl beside this file; a finished (seed, order) is
skipped, so a killed run resumes.

    .venv/bin/python results/training_order/run.py [FOLDER] --seeds=0,1,...
"""
import gzip
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = os.path.join(HERE, "rows.jsonl")
ROOT = next((a for a in sys.argv[1:] if not a.startswith("--")), "/tmp/order_demo/folder")
SEEDS = [int(s) for a in sys.argv[1:] if a.startswith("--seeds=")
         for s in a.split("=", 1)[1].split(",")] or [0, 1]
SRC = "/usr/share/datasets/fashion-mnist"


def idx(name):
    with gzip.open(os.path.join(SRC, name)) as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def write_folder():
    from PIL import Image
    if os.path.exists(os.path.join(ROOT, "done")):
        return
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = idx(f"{prefix}-images-idx3-ubyte.gz"), idx(f"{prefix}-labels-idx1-ubyte.gz")
        for i, (image, label) in enumerate(zip(images, labels)):
            d = os.path.join(ROOT, split, f"class_{label}")
            os.makedirs(d, exist_ok=True)
            Image.fromarray(image).save(os.path.join(d, f"{i:05d}.png"))
    open(os.path.join(ROOT, "done"), "w").close()


def main():
    write_folder()
    import keras
    from tllm_tf.data import load_image_folder, make_pipeline
    data = load_image_folder(os.path.join(ROOT, "train"), os.path.join(ROOT, "test"),
                             image_size=28, num_channels=1)
    test = make_pipeline(data.test, batch_size=256, training=False)
    done = set()
    if os.path.exists(ROWS):
        with open(ROWS) as f:
            done = {(r["seed"], r["order"]) for r in map(json.loads, f)}
    for seed in SEEDS:
        for order in ("windowed", "drawn"):
            if (seed, order) in done:
                continue
            keras.utils.set_random_seed(seed)
            train = make_pipeline(data.train, batch_size=64, training=True, seed=seed,
                                  shuffle_buffer=1000,
                                  shuffled_train=data.shuffled_train if order == "drawn" else None)
            classes = [len(np.unique(labels)) for _, labels in train.take(200).as_numpy_iterator()]
            model = keras.Sequential([
                keras.Input((28, 28, 1)), keras.layers.Rescaling(1 / 255.0), keras.layers.Flatten(),
                keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
            model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=["accuracy"])
            model.fit(train, epochs=3, verbose=0)
            _, accuracy = model.evaluate(test, verbose=0)
            row = {"seed": seed, "order": order, "classes_per_batch": float(np.mean(classes)),
                   "test_accuracy": float(accuracy)}
            with open(ROWS, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


main()
