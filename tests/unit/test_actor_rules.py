"""Who may do what: the roles every writer of Dealtrail obeys."""

from __future__ import annotations

import dataclasses

import pytest

from libs.domain.actors import SYSTEM, Actor, Role
from libs.domain.errors import Forbidden


def admin(name: str = "ada") -> Actor:
    return Actor(name=name, role=Role.ADMIN)


def manager(name: str = "max") -> Actor:
    return Actor(name=name, role=Role.MANAGER)


def rep(name: str = "bob") -> Actor:
    return Actor(name=name, role=Role.REP)


def auditor(name: str = "aud") -> Actor:
    return Actor(name=name, role=Role.AUDITOR)


# --- running commands ----------------------------------------------------------------


def test_auditors_cannot_run_commands():
    with pytest.raises(Forbidden) as exc:
        auditor().check_may_command()
    assert exc.value.kind == "forbidden"
    assert exc.value.code == "forbidden"


@pytest.mark.parametrize("actor", [admin(), manager(), rep()], ids=["admin", "manager", "rep"])
def test_admins_managers_and_reps_may_run_commands(actor):
    actor.check_may_command()


def test_auditors_cannot_change_a_deal_even_one_they_own():
    with pytest.raises(Forbidden):
        auditor("aud").check_may_change_deal(owner="aud")


# --- changing deals ------------------------------------------------------------------


def test_a_rep_may_change_their_own_deal():
    rep("bob").check_may_change_deal(owner="bob")


def test_a_rep_may_not_change_someone_elses_deal():
    with pytest.raises(Forbidden) as exc:
        rep("bob").check_may_change_deal(owner="carol")
    assert exc.value.details == {"owner": "carol"}
    assert "'carol'" in exc.value.message


def test_a_rep_owns_a_deal_only_by_the_exact_name():
    with pytest.raises(Forbidden):
        rep("bob").check_may_change_deal(owner="Bob")


def test_a_rep_may_not_create_a_deal_without_an_owner():
    with pytest.raises(Forbidden):
        rep("bob").check_may_change_deal(owner="")


@pytest.mark.parametrize("actor", [admin(), manager()], ids=["admin", "manager"])
@pytest.mark.parametrize("owner", ["bob", "carol", "ada", "max"])
def test_admins_and_managers_may_change_any_deal(actor, owner):
    actor.check_may_change_deal(owner=owner)


# --- managing pipelines --------------------------------------------------------------


@pytest.mark.parametrize("actor", [admin(), manager()], ids=["admin", "manager"])
def test_admins_and_managers_may_manage_pipelines(actor):
    actor.check_may_manage_pipelines()


@pytest.mark.parametrize("actor", [rep(), auditor()], ids=["rep", "auditor"])
def test_reps_and_auditors_may_not_manage_pipelines(actor):
    with pytest.raises(Forbidden) as exc:
        actor.check_may_manage_pipelines()
    assert exc.value.kind == "forbidden"


# --- reading the audit log -----------------------------------------------------------


@pytest.mark.parametrize("actor", [auditor(), admin()], ids=["auditor", "admin"])
def test_auditors_and_admins_may_read_the_audit_log(actor):
    actor.check_may_read_audit()


@pytest.mark.parametrize("actor", [manager(), rep()], ids=["manager", "rep"])
def test_managers_and_reps_may_not_read_the_audit_log(actor):
    with pytest.raises(Forbidden):
        actor.check_may_read_audit()


# --- the actor itself ----------------------------------------------------------------


def test_only_admins_are_admins():
    assert admin().is_admin
    assert not manager().is_admin
    assert not rep().is_admin
    assert not auditor().is_admin


def test_roles_are_read_from_their_lower_case_names():
    assert [Role(r) for r in ("admin", "manager", "rep", "auditor")] == [
        Role.ADMIN,
        Role.MANAGER,
        Role.REP,
        Role.AUDITOR,
    ]
    with pytest.raises(ValueError):
        Role("owner")


def test_an_actor_cannot_change_role_once_made():
    actor = rep()

    with pytest.raises(dataclasses.FrozenInstanceError):
        actor.role = Role.ADMIN  # type: ignore[misc]


def test_the_system_actor_is_an_admin_called_system():
    assert SYSTEM.name == "system"
    assert SYSTEM.is_admin
    SYSTEM.check_may_command()
    SYSTEM.check_may_manage_pipelines()
    SYSTEM.check_may_change_deal(owner="anyone")
    SYSTEM.check_may_read_audit()
