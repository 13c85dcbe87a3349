"""A class-sorted image folder larger than the shuffle buffer: windowed order vs drawn order.

Fashion-MNIST's 60,000 training images written as PNGs, one folder a class (test: its
10,000), from Debian's dataset-fashion-mnist. The shuffle buffer is set to 1,000 images, as a
folder of 224x224 images larger than about 3,500 gets (2 GiB). Per seed, an MLP (64 hidden
units) trains 3 epochs with SGD twice: on the files' order mixed in the buffer (what
`training_batches` read before 7ae4c45), and on the order the folder draws each epoch
(`shuffled_train`, since). Appends each run's mean number of classes in a batch (first 200
batches) and its test accuracy to rows.jsonl beside this file; a finished (seed, order) is
skipped, so a killed run resumes.

    .venv/bin/python results/training_order/run.py --folder=/tmp/order_demo/folder \
        --seeds=0,1,2,3,4,5,6,7,8,9
"""

import argparse
import json
import os

import numpy as np

from tllm_tf.data.idx_format import read_idx

ROWS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rows.jsonl")
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
ORDERS = ("windowed", "drawn")


def write_folder(folder):
    """Writes Fashion-MNIST as PNG class folders under `folder` (once)."""
    from PIL import Image
    finished = os.path.join(folder, "done")
    if os.path.exists(finished):
        return
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(os.path.join(FASHION_MNIST, f"{prefix}-images-idx3-ubyte.gz"))
        labels = read_idx(os.path.join(FASHION_MNIST, f"{prefix}-labels-idx1-ubyte.gz"))
        for index, (image, label) in enumerate(zip(images, labels)):
            class_folder = os.path.join(folder, split, f"class_{label}")
            os.makedirs(class_folder, exist_ok=True)
            Image.fromarray(image).save(os.path.join(class_folder, f"{index:05d}.png"))
    open(finished, "w").close()


def finished_runs():
    if not os.path.exists(ROWS):
        return set()
    with open(ROWS) as stream:
        return {(row["seed"], row["order"]) for row in map(json.loads, stream)}


def one_run(data, test, seed, order):
    """Trains the MLP on `order`'s batches; returns the run's row."""
    import keras
    from tllm_tf.data import make_pipeline
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
    return {"seed": seed, "order": order, "classes_per_batch": float(np.mean(classes)),
            "test_accuracy": float(accuracy)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="/tmp/order_demo/folder",
                        help="where the PNG class folders are written")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    args = parser.parse_args()
    write_folder(args.folder)
    from tllm_tf.data import load_image_folder, make_pipeline
    data = load_image_folder(os.path.join(args.folder, "train"),
                             os.path.join(args.folder, "test"), image_size=28, num_channels=1)
    test = make_pipeline(data.test, batch_size=256, training=False)
    done = finished_runs()
    for seed in (int(seed) for seed in args.seeds.split(",")):
        for order in ORDERS:
            if (seed, order) not in done:
                row = one_run(data, test, seed, order)
                with open(ROWS, "a") as stream:
                    stream.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
