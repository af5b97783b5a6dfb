"""The handler table covers the commands, and the policies react to stage removals."""

from __future__ import annotations

from libs.application import handlers
from libs.domain import commands
from libs.domain.pipeline import Pipeline


def test_every_command_has_exactly_one_handler_and_nothing_else_does() -> None:
    defined = {
        value
        for value in vars(commands).values()
        if isinstance(value, type)
        and issubclass(value, commands.Command)
        and value
        not in (
            commands.Command,
            commands.Change,
            commands.PipelineChange,
            commands.DealChange,
            commands.WebhookChange,
            commands.AutomationChange,
        )
    }

    assert defined == set(handlers.HANDLERS)


def test_the_stranded_deal_sweep_reacts_to_the_removal_of_a_stage() -> None:
    removed = Pipeline.StageRemoved  # type: ignore[attr-defined]

    assert {removed: (handlers.sweep_stranded_deals,)} == handlers.POLICIES
