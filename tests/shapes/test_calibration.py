import pytest

from tessera_shapes import calibration, shape_rules


def test_pick_threshold_sits_in_the_gap_nearer_the_near_misses() -> None:
    higher = calibration.pick_threshold([0.9, 1.0, 0.95], [0.5, 0.7, 0.98], higher_passes=True)
    lower = calibration.pick_threshold([0.0, 0.1], [0.3, 0.5], higher_passes=False)

    assert higher.value == pytest.approx(0.7 + calibration.GAP_SHARE * 0.2)
    assert (higher.accepted, higher.refused) == (1.0, pytest.approx(2 / 3))
    assert lower.value == pytest.approx(0.3 - calibration.GAP_SHARE * 0.2)
    assert (lower.accepted, lower.refused) == (1.0, 1.0)


def test_pick_threshold_without_anything_to_refuse() -> None:
    floor = calibration.pick_threshold([0.8, 0.9], [], higher_passes=True)
    hopeless = calibration.pick_threshold([0.8, 0.9], [0.85, 0.95], higher_passes=True)

    assert floor.value == pytest.approx(0.8 - calibration.FLOOR_MARGIN)
    assert hopeless.value is None


@pytest.fixture(scope="module")
def report() -> dict[str, dict[str, calibration.MeasureCalibration]]:
    return calibration.calibrate(seeds=(3,), per_kind=8, pairs=8)


def test_calibration_covers_every_rule(report: dict[str, dict[str, calibration.MeasureCalibration]]) -> None:
    assert set(report) == set(shape_rules.SHAPE_RULES)
    for shape, measures in report.items():
        for name, measured in measures.items():
            assert measured.scorer_value is not None, (shape, name)
            assert len(measured.accept) > len(measured.accept_blurred) > 0
            assert all(len(values) == 16 for values in measured.refuse.values())


def test_scorer_thresholds_split_a_fresh_corpus(report: dict[str, dict[str, calibration.MeasureCalibration]]) -> None:
    # The scorer's constants came from seeds 5-7; on seed 3 every true drawing still passes every measure, and each
    # measure still refuses the near misses it is meant to catch.
    for shape, measures in report.items():
        for name, measured in measures.items():
            threshold = measured.scorer_value
            assert threshold is not None
            sign = 1 if measured.measure.higher_passes else -1
            assert all(sign * v >= sign * threshold for v in measured.accept), (shape, name)
            caught = [v for kind in measured.measure.catches for v in measured.refuse[kind]]
            if caught:
                refused = sum(sign * v < sign * threshold for v in caught) / len(caught)
                assert refused >= 0.9, (shape, name, refused)
            summary = measured.summary()
            assert summary["scorer"] == threshold and summary["catches"] == list(measured.measure.catches)


def test_a_round_shape_has_no_swing_to_measure() -> None:
    evidence = shape_rules.ShapeEvidence(ious=(("circle", 1.0),), swings=(0.0,) * 6, solidity=1.0, hole=0.0)

    assert calibration.measure_value("asymmetry", "circle", evidence) == 0.0
    with pytest.raises(ValueError, match="no symmetry order"):
        calibration.measure_value("swing", "circle", evidence)
