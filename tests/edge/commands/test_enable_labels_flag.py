"""``--enable-labels``: the command-line way to publish labels a bundle ships disabled."""

from __future__ import annotations

import argparse

from edge.commands.run import add_arguments, config_from_args


def _cfg(*argv: str):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_all_and_lists_reach_the_detector_config():
    assert _cfg().detector.enable_labels == []
    assert _cfg("--enable-labels", "all").detector.enable_labels == "all"
    assert _cfg("--enable-labels", "Erirub_song, Turmer_call").detector.enable_labels == ["Erirub_song", "Turmer_call"]
