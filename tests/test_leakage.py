"""The leakage filter (training/leakage.py) on constructed conversations."""

from __future__ import annotations

import pytest

from model.text import normalize_utterance
from training.corpus import Dialog, Utterance
from training.leakage import (
    DEFAULT_THRESHOLD,
    NgramIndex,
    dialog_ngrams,
    filter_leaks,
)

# Invented conversations in SwDA's style (case, punctuation, fillers, one line per segment).
GARDEN = [
    ("A", "So, uh, do you do much gardening yourself?"),
    ("B", "Well, I try to, but the soil around here is mostly clay,"),
    ("B", "so, um, I end up hauling in bags of compost every single spring."),
    ("A", "Oh, I know what you mean."),
    ("A", "We put in raised beds two years ago and that made all the difference."),
    ("B", "Really? What did you build them out of?"),
    ("A", "Just cedar boards from the lumber yard, nothing fancy, and some chicken wire."),
    ("A", "The rabbits were eating every lettuce plant we set out."),
    ("B", "Uh-huh."),
    ("B", "We have the same problem with deer coming up from the creek at night."),
    ("A", "Deer are worse, I think, because a fence has to be eight feet tall."),
    ("B", "Right, and my husband refuses to build anything that tall in the front yard."),
    ("A", "What do you mostly grow, vegetables or flowers?"),
    ("B", "Tomatoes mainly, and peppers, and, uh, a little bit of okra for my mother."),
    ("A", "I never could get okra to do well, it always gets some kind of blight."),
    ("B", "You have to wait until the ground is really warm before you plant it."),
    ("A", "Maybe that was my mistake, I always planted it in early April."),
    ("B", "Yeah, here we wait until May, at least until after the last cool spell."),
]

CARS = [
    ("A", "Are you thinking about buying a new car any time soon?"),
    ("B", "Not really, our old station wagon still runs pretty well."),
    ("B", "It has almost two hundred thousand miles on it, though."),
    ("A", "Wow, that is a lot of miles for a wagon."),
    ("A", "We traded in our truck last fall for one of those small imported sedans."),
    ("B", "How do you like the gas mileage on it?"),
    ("A", "It is great on the highway, but the back seat is too small for the kids."),
    ("B", "That was the thing we worried about with three teenagers in the family."),
    ("A", "Did you look at any of the minivans when you were shopping last time?"),
    ("B", "We did, but the dealer wanted way too much money for the one with the sliding door."),
    ("A", "Dealers always seem to add on some extra package you never asked for."),
    ("B", "Exactly, the undercoating and the pinstripes and all of that."),
]


def swda_dialog(lines, dialog_id="2001"):
    """What the SwDA reader produces: one normalized utterance per segment."""
    return Dialog(dialog_id, "swda", [Utterance(s, normalize_utterance(t)) for s, t in lines])


def zhao_dialog(lines, dialog_id):
    """The same conversation transcribed the Zhao way: consecutive segments of one speaker are
    joined, fillers are gone, a couple of segments are missing and a few words differ."""
    out: list[Utterance] = []
    for i, (speaker, text) in enumerate(lines):
        if i % 7 == 3:  # segments the other transcript does not have
            continue
        tokens = normalize_utterance(text.replace("every single", "each").replace("at night", ""))
        if out and out[-1].speaker == speaker:
            out[-1].tokens.extend(tokens)
        else:
            out.append(Utterance(speaker, tokens, "statement"))
    return Dialog(dialog_id, "zhao", out)


def resegmented_with_fillers(lines, dialog_id):
    """The same conversation with segments split at commas and fillers added everywhere."""
    out = []
    for speaker, text in lines:
        for piece in text.split(","):
            out.append((speaker, f"Uh, {piece.strip()}, um, you know"))
    return swda_dialog(out, dialog_id)


def references():
    unrelated = zhao_dialog(CARS, "valid/0")
    return {
        "valid": [unrelated, zhao_dialog(GARDEN, "valid/1")],
        "test": [zhao_dialog(CARS[::-1], "test/0")],
    }


def test_ngrams_ignore_segmentation():
    d = swda_dialog(GARDEN)
    joined = Dialog("x", "swda", [Utterance("A", list(d.tokens()))])
    assert dialog_ngrams(d) == dialog_ngrams(joined)
    assert all(len(g) == 5 for g in dialog_ngrams(d))
    assert dialog_ngrams(Dialog("y", "swda", [Utterance("A", ["too", "short"])])) == set()


def test_copied_conversation_is_caught():
    refs = references()
    candidates = [swda_dialog(GARDEN, "2001"), resegmented_with_fillers(GARDEN, "2002")]
    report = filter_leaks(candidates, refs)
    assert report.kept == []
    assert [(m.dialog_id, m.split, m.index, m.ref_id) for m in report.excluded] == [
        ("2001", "valid", 1, "valid/1"),
        ("2002", "valid", 1, "valid/1"),
    ]
    for m in report.excluded:
        assert m.score >= 2 * DEFAULT_THRESHOLD and m.shared >= 20
    assert report.excluded_per_split == {"valid": 2}
    summary = report.summary()
    assert summary["excluded_count"] == 2
    assert summary["excluded"][0]["dialog_id"] == "2001"
    assert summary["excluded"][0]["split"] == "valid" and summary["excluded"][0]["index"] == 1


def test_unrelated_conversation_is_kept():
    refs = {"valid": [zhao_dialog(GARDEN, "valid/0")], "test": []}
    report = filter_leaks([swda_dialog(CARS, "3001")], refs)
    assert [d.id for d in report.kept] == ["3001"]
    assert report.excluded == []
    assert report.max_kept is None or report.max_kept.score < 0.05


def test_stock_phrases_do_not_make_a_leak():
    # Conversations that share only common phrases ("i don't know if you", "you know what i
    # mean") stay far below the threshold.
    stock = "i don't know if you ever you know what i mean it's one of those things"
    a = swda_dialog([("A", stock)] + CARS, "3002")
    b = zhao_dialog([("B", stock)] + GARDEN, "test/0")
    best = NgramIndex({"test": [b]}).best(a)
    assert best is not None and best.shared > 0
    assert best.score < DEFAULT_THRESHOLD
    assert filter_leaks([a], {"test": [b]}).excluded == []


def test_min_shared_guards_tiny_dialogs():
    tiny = swda_dialog([("A", "Uh, we always try to pay it back.")], "3003")
    ref = zhao_dialog([("B", "and we always try to pay it back at the end of the month")], "t/0")
    best = NgramIndex({"test": [ref]}).best(tiny)
    assert best.score == 1.0 and best.shared < 20
    assert filter_leaks([tiny], {"test": [ref]}).kept == [tiny]
    assert filter_leaks([tiny], {"test": [ref]}, min_shared=1).kept == []


def test_scores_rank_the_matching_reference_first():
    index = NgramIndex(references())
    scores = index.scores(resegmented_with_fillers(GARDEN, "2002"))
    assert (scores[0].split, scores[0].index) == ("valid", 1)
    assert all(s.score < 0.1 for s in scores[1:])
    assert index.best(Dialog("e", "swda", [])) is None


@pytest.mark.parametrize("threshold, excluded", [(0.2, 1), (1.01, 0)])
def test_threshold_is_configurable(threshold, excluded):
    report = filter_leaks([swda_dialog(GARDEN)], references(), threshold=threshold)
    assert len(report.excluded) == excluded
    assert report.summary()["threshold"] == threshold
