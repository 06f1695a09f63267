"""Forgetting events: the tracker against a per-example reference on a real (tiny) training run, its state,
the counts files and the `forgetting` selector."""
import numpy as np
import pytest
import torch
from PIL import Image

from proxynas_fast.selection import ForgettingTracker, load_forgetting_counts, select


def reference_forgetting(events, num_examples):
    """Per-example loop over (index, correct) presentations in order."""
    last, forgets, learned = {}, np.zeros(num_examples), np.zeros(num_examples, dtype=bool)
    for i, ok in events:
        if last.get(i) is True and not ok:
            forgets[i] += 1
        last[i] = ok
        learned[i] |= ok
    forgets[~learned] = np.inf
    return forgets


def test_hand_made_sequences():
    tracker = ForgettingTracker(5)
    tracker.update([0, 1, 2, 4], [True, False, True, False])
    tracker.update(np.array([0, 1, 2, 4]), np.array([False, False, True, True]))
    tracker.update(torch.tensor([4, 0]), torch.tensor([False, True]))
    tracker.update([0], [False])
    # 0: T F T F -> 2; 1: F F -> never learned; 2: T T -> 0; 3: never presented; 4: F T F -> 1
    assert tracker.counts().tolist() == [2, np.inf, 0, np.inf, 1]
    assert tracker.presentations().tolist() == [4, 2, 2, 0, 3]


def test_repeats_within_a_batch_are_successive_presentations():
    tracker = ForgettingTracker(3)
    tracker.update([1, 0, 1, 1], [True, True, False, True])
    assert tracker.counts().tolist() == [0, 1, np.inf]
    assert tracker.presentations().tolist() == [1, 3, 0]


def test_bad_updates_raise():
    tracker = ForgettingTracker(4)
    with pytest.raises(ValueError, match="indices has 2 entries but correct has 3"):
        tracker.update([0, 1], [True, False, True])
    with pytest.raises(ValueError, match=r"\[4\] are outside 0..3"):
        tracker.update([1, 4], [True, True])
    with pytest.raises(ValueError, match="bool tensor"):
        tracker.update(torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="num_examples"):
        ForgettingTracker(0)


@pytest.fixture(scope="module")
def training_log(cifar10_jpeg_dir):
    """Softmax regression trained 6 epochs by minibatch SGD (numpy) on 800 real CIFAR-10 images at 16x16;
    every minibatch's (indices, correct) before its update is recorded, as a training loop would."""
    rows = (cifar10_jpeg_dir / "train_order.txt").read_text().splitlines()[:800]
    images, labels = [], []
    for row in rows:
        _, rel, label = row.split("\t")
        with Image.open(cifar10_jpeg_dir / rel) as im:
            images.append(np.asarray(im.convert("RGB").resize((16, 16)), dtype=np.float64).reshape(-1))
        labels.append(int(label))
    x, y = np.stack(images) / 255.0 - 0.5, np.array(labels)
    rng = np.random.default_rng(0)
    weights, bias = np.zeros((x.shape[1], 10)), np.zeros(10)
    log = []
    for _ in range(6):
        for batch in np.array_split(rng.permutation(len(x)), 16):
            logits = x[batch] @ weights + bias
            log.append((torch.from_numpy(batch), torch.from_numpy(logits.argmax(1) == y[batch])))
            prob = np.exp(logits - logits.max(1, keepdims=True))
            prob /= prob.sum(1, keepdims=True)
            prob[np.arange(len(batch)), y[batch]] -= 1.0
            weights -= 0.05 * x[batch].T @ prob / len(batch)
            bias -= 0.05 * prob.mean(0)
    return log, len(x)


def test_tracker_matches_reference_on_real_training(training_log, tmp_path):
    log, n = training_log
    tracker = ForgettingTracker(n)
    resumed = ForgettingTracker(n)
    for step, (indices, correct) in enumerate(log):
        tracker.update(indices, correct)
        resumed.update(indices, correct)
        if step == len(log) // 2:  # checkpoint half-way, restore into a fresh tracker, carry on
            resumed.save(tmp_path / "forgetting.pt")
            resumed = ForgettingTracker.load(tmp_path / "forgetting.pt")
    events = [(int(i), bool(c)) for indices, correct in log for i, c in zip(indices.tolist(), correct.tolist())]
    expected = reference_forgetting(events, n)
    counts = tracker.counts()
    assert np.array_equal(counts, expected)
    assert np.array_equal(resumed.counts(), counts)
    assert np.all(tracker.presentations() == 6)
    finite = counts[np.isfinite(counts)]
    assert finite.max() >= 2 and (finite > 0).mean() > 0.1  # real forgetting happened
    assert np.isinf(counts).sum() > 0  # and some examples were never learned

    most = select("forgetting", np.full(n, 0.5), count=100, seed=0, forgetting_counts=counts)
    threshold = np.sort(counts)[::-1][99]
    assert np.all(counts[most] >= threshold)
    assert np.isinf(counts[most]).sum() == min(100, np.isinf(counts).sum())


def test_state_dict_round_trip_and_checks(tmp_path):
    tracker = ForgettingTracker(3)
    tracker.update([0, 1], [True, False])
    tracker.update([0], [False])
    other = ForgettingTracker(3)
    other.load_state_dict(tracker.state_dict())
    assert other.counts().tolist() == tracker.counts().tolist()
    other.update([0], [True])
    assert tracker.counts()[0] == 1 and other.counts()[0] == 1  # state copied, not shared
    with pytest.raises(ValueError, match="for 3 examples, this tracker has 4"):
        ForgettingTracker(4).load_state_dict(tracker.state_dict())
    with pytest.raises(ValueError, match="keys"):
        ForgettingTracker(3).load_state_dict({"num_examples": torch.tensor(3)})
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a ForgettingTracker state"):
        ForgettingTracker.load(tmp_path / "other.pt")


def test_counts_files(tmp_path):
    tracker = ForgettingTracker(4)
    tracker.update([0, 1, 2], [True, True, False])
    tracker.update([0, 1, 2], [False, True, False])
    for name in ("c.npy", "c.txt"):
        tracker.save_counts(tmp_path / name)
        assert load_forgetting_counts(tmp_path / name).tolist() == [1, 0, np.inf, np.inf]
    (tmp_path / "pairs.txt").write_text("2 inf\n0 3\n1 0\n")
    assert load_forgetting_counts(tmp_path / "pairs.txt").tolist() == [3, 0, np.inf]
    (tmp_path / "gap.txt").write_text("0 3\n2 1\n")
    with pytest.raises(ValueError, match=r"no count for example indices \[1\]"):
        load_forgetting_counts(tmp_path / "gap.txt")
    (tmp_path / "bad.txt").write_text("1\n2\nthree\n")
    with pytest.raises(ValueError, match=r"bad.txt:3: cannot parse"):
        load_forgetting_counts(tmp_path / "bad.txt")
    (tmp_path / "neg.txt").write_text("1\n-2\n")
    with pytest.raises(ValueError, match=r"neg.txt.*>= 0"):
        load_forgetting_counts(tmp_path / "neg.txt")
    np.save(tmp_path / "twod.npy", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="1-D"):
        load_forgetting_counts(tmp_path / "twod.npy")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_forgetting_counts(tmp_path / "missing.npy")


def test_selector_ties_and_errors():
    counts = np.array([0, 3, 3, 3, 3, np.inf, 1, 0])
    e = np.full(8, 0.2)
    assert select("forgetting", e, count=1, forgetting_counts=counts).tolist() == [5]
    picks = {tuple(select("forgetting", e, count=3, forgetting_counts=counts, seed=s)) for s in range(8)}
    assert all(5 in p and set(p) - {5} <= {1, 2, 3, 4} for p in picks) and len(picks) > 1
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    balanced = select("forgetting", e, count=4, labels=labels, class_balanced=True, forgetting_counts=counts)
    assert set(balanced[:2]) <= {1, 2, 3} and set(balanced[2:]) == {4, 5}
    with pytest.raises(ValueError, match=">= 0"):
        select("forgetting", e, count=2, forgetting_counts=-counts)
    with pytest.raises(ValueError, match=r"needs option\(s\) \['forgetting_counts'\]"):
        select("forgetting", e, count=2)
    with pytest.raises(ValueError, match="got a scalar"):
        select("forgetting", e, count=2, forgetting_counts=3.0)
    assert select("forgetting", e, count=1, forgetting_counts=counts.tolist()).tolist() == [5]  # lists work
