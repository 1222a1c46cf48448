"""Which model outputs a drift window summarizes."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.agent.daemon.errors import ConfigError
from edgefleet.agent.daemon.summarize import DriftSummarizer
from edgefleet.agent.drift import ReferenceProfile


def _two_output_profile(rng: np.random.Generator) -> tuple[ReferenceProfile, np.ndarray]:
    """A profile like ``edgefleet release`` writes for a classifier with a label and a
    probabilities output: columns ``label``, ``probabilities[0..2]``."""
    x = rng.normal(size=(500, 2))
    probs = rng.dirichlet(np.ones(3), size=500)
    y = np.concatenate([probs.argmax(axis=1)[:, None], probs], axis=1)
    names = ["label", "probabilities[0]", "probabilities[1]", "probabilities[2]"]
    return ReferenceProfile.build(x, ["x[0]", "x[1]"], y, names, bins=8), x


def test_every_profiled_output_is_summarized_side_by_side() -> None:
    rng = np.random.default_rng(0)
    profile, x = _two_output_profile(rng)
    summarizer = DriftSummarizer()
    summarizer.add_model("clf", profile, input_names=["x"],
                         output_names=["label", "probabilities"], output_widths=[1, 3])
    probs = rng.dirichlet(np.ones(3), size=200)
    summarizer.add("clf", "2", [{"x": x[:200]}],
                   [{"label": probs.argmax(axis=1), "probabilities": probs}])
    [window] = summarizer.finish(0.0, 60.0)
    assert window.version == "2" and window.summary.predictions == 200
    assert window.summary.reference == profile.digest
    assert [c.name for c in window.summary.outputs] == [c.name for c in profile.outputs]
    label = window.summary.outputs[0]
    assert int(np.sum(label.counts)) == 200


def test_a_single_output_as_wide_as_the_profile_is_still_chosen() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 2))
    probs = rng.dirichlet(np.ones(4), size=300)
    profile = ReferenceProfile.build(x, ["a", "b"], probs, ["p0", "p1", "p2", "p3"], bins=8)
    summarizer = DriftSummarizer()
    summarizer.add_model("clf", profile, input_names=["x"],
                         output_names=["label", "scores"], output_widths=[1, 4])
    summarizer.add("clf", "1", [{"x": x}], [{"label": probs.argmax(axis=1), "scores": probs}])
    [window] = summarizer.finish(0.0, 60.0)
    assert window.summary.predictions == 300


def test_profiled_outputs_whose_widths_do_not_add_up_are_a_config_error() -> None:
    profile, _ = _two_output_profile(np.random.default_rng(2))
    with pytest.raises(ConfigError, match="no output has 4 column"):
        DriftSummarizer().add_model("clf", profile, input_names=["x"],
                                    output_names=["label", "probabilities"],
                                    output_widths=[1, 5])
