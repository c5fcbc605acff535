"""Statements of migrate_roles, built without a server: CREATE ROLE, GRANT, ALTER ROLE ... SET, and the plan of what
is created, kept and granted."""

from __future__ import annotations

import pytest

from ansible_collections.pgdts.migration.plugins.module_utils import roles

HASH = 'SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy'


def text(statement):
    return statement.as_string(None)


def role(name, password=None, **attributes):
    values = {column: False for column, _yes, _no in roles.ATTRIBUTES}
    values.update(rolinherit=True)
    values.update(attributes)
    return roles.Role(name, values, password=password)


def test_create_role_spells_out_every_attribute_and_quotes_name_and_hash():
    r = roles.Role('App "Owner"', {'rolsuper': False, 'rolinherit': False, 'rolcreaterole': True, 'rolcreatedb': True,
                                   'rolcanlogin': True, 'rolreplication': False, 'rolbypassrls': True},
                   connection_limit=7, valid_until='2099-01-01T00:00:00.000000+00', password=HASH + "'x")
    assert text(roles.create_role_statement(r)) == (
        'CREATE ROLE "App ""Owner""" WITH NOSUPERUSER NOINHERIT CREATEROLE CREATEDB LOGIN NOREPLICATION BYPASSRLS '
        "CONNECTION LIMIT 7 VALID UNTIL '2099-01-01T00:00:00.000000+00' PASSWORD '" + HASH + "''x'")


def test_create_role_without_password_or_expiry_has_no_such_clause():
    statement = text(roles.create_role_statement(role('plain', rolsuper=True, rolcanlogin=True)))
    assert statement == ('CREATE ROLE "plain" WITH SUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION '
                         'NOBYPASSRLS CONNECTION LIMIT  -1')     # psycopg writes negative numbers with a blank


def test_role_repr_hides_the_hash():
    assert HASH not in repr(role('r', password=HASH))


def test_grant_with_and_without_admin_option():
    assert text(roles.grant_statement(roles.Membership('readers', 'App', True))) == \
        'GRANT "readers" TO "App" WITH ADMIN OPTION'
    assert text(roles.grant_statement(roles.Membership('pg_read_all_data', 'app', False))) == \
        'GRANT "pg_read_all_data" TO "app"'


@pytest.mark.parametrize('entry, expected', [
    ('statement_timeout=5s', """ALTER ROLE "r" SET "statement_timeout" TO '5s'"""),
    ("myapp.flag=it's on", """ALTER ROLE "r" SET "myapp"."flag" TO 'it''s on'"""),
    ('DateStyle=ISO, DMY', """ALTER ROLE "r" SET "DateStyle" TO 'ISO, DMY'"""),
    ('search_path=app, "$user", "We ird", public',
     """ALTER ROLE "r" SET "search_path" TO 'app', '$user', 'We ird', 'public'"""),
    ('search_path=', """ALTER ROLE "r" SET "search_path" TO ''"""),
    ('x.y=a=b', """ALTER ROLE "r" SET "x"."y" TO 'a=b'"""),
])
def test_setting_statement(entry, expected):
    assert text(roles.setting_statement('r', entry)) == expected


@pytest.mark.parametrize('value, expected', [
    ('a', ['a']),
    ('  a ,b,  c  ', ['a', 'b', 'c']),
    ('"$user", public', ['$user', 'public']),
    ('"A ""quoted"" one",x', ['A "quoted" one', 'x']),
    ('"a,b"', ['a,b']),
    ('', []),
])
def test_split_guc_list(value, expected):
    assert roles.split_guc_list(value) == expected


@pytest.mark.parametrize('value', ['"open', 'a b', 'a,,b', 'a,'])
def test_split_guc_list_rejects(value):
    with pytest.raises(ValueError):
        roles.split_guc_list(value)


def test_plan_creates_missing_keeps_existing_and_grants_only_around_created_roles():
    source_roles = [role('new_owner'), role('new_member'), role('kept_one'), role('kept_two')]
    memberships = [
        roles.Membership('kept_one', 'new_member', True),          # created member in an existing role: granted
        roles.Membership('new_owner', 'kept_two', False),          # existing member in a created role: granted
        roles.Membership('kept_one', 'kept_two', False),           # between kept roles: not touched
        roles.Membership('pg_read_all_data', 'new_owner', False),  # predefined role the destination has
        roles.Membership('pg_future_role', 'new_owner', False),    # predefined role the destination lacks
        roles.Membership('new_owner', 'new_member', False),        # already granted on the destination
    ]
    existing = {'kept_one', 'kept_two', 'postgres', 'pg_read_all_data'}
    to_create, kept, grants, skipped = roles.plan(source_roles, memberships, existing, {('new_owner', 'new_member')})
    assert [r.name for r in to_create] == ['new_owner', 'new_member']
    assert kept == ['kept_one', 'kept_two']
    assert [(m.role, m.member, m.admin_option) for m in grants] == [
        ('kept_one', 'new_member', True), ('new_owner', 'kept_two', False), ('pg_read_all_data', 'new_owner', False)]
    assert [(m.role, m.member) for m in skipped] == [('pg_future_role', 'new_owner')]


def test_describe_names_roles_and_never_the_hash():
    result = {'created': ['a', 'b'], 'kept': ['k'], 'memberships': [{'role': 'a', 'member': 'b', 'admin_option': True}],
              'memberships_skipped': [], 'settings': [{'role': 'a', 'name': 'work_mem'}], 'without_password': ['b'],
              'passwords_read': False, 'logging_quiet': True}
    line = roles.describe(result)
    assert line.startswith('roles: 2 created ("a", "b"); 1 already on the destination, left as they are ("k"); '
                           '1 membership(s) granted; 1 role setting(s) set')
    assert 'created without password' in line and '"b"' in line
