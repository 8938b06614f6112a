"""The database itself enforces the ledger rules, even for raw SQL that bypasses the ORM."""

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.utils import DatabaseError

from billing.models import AccountKind, Statement, StatementKind, StatementStatus, Transaction
from billing.services import Posting, account_get, accounts_lock, ledger_reconcile, posting_write
from tests.billing.conftest import T0, fund, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def raw_transaction(cursor, key: str) -> int:  # type: ignore[no-untyped-def]
    cursor.execute(
        "INSERT INTO billing_transaction (kind, idempotency_key, currency, memo, posted_at) "
        "VALUES ('top_up', %s, 'USD', '', now()) RETURNING id",
        [key],
    )
    return int(cursor.fetchone()[0])


def test_raw_sql_unbalanced_transaction_is_rejected_at_commit() -> None:
    a = account_get(kind=AccountKind.STRIPE_CLEARING)
    b = account_get(kind=AccountKind.BUYER_WALLET, user_id=make_user().pk)

    def write_unbalanced() -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            txn = raw_transaction(cursor, "raw-unbalanced")
            cursor.execute(
                "INSERT INTO billing_entry (transaction_id, account_id, amount_micros) VALUES (%s, %s, -100), (%s, %s, 99)",
                [txn, a.pk, txn, b.pk],
            )

    with pytest.raises(DatabaseError, match="does not balance"):
        write_unbalanced()

    assert not Transaction.objects.filter(idempotency_key="raw-unbalanced").exists()


def test_raw_sql_balanced_transaction_commits() -> None:
    a = account_get(kind=AccountKind.STRIPE_CLEARING)
    b = account_get(kind=AccountKind.BUYER_WALLET, user_id=make_user().pk)

    with transaction.atomic(), connection.cursor() as cursor:
        txn = raw_transaction(cursor, "raw-balanced")
        # Legs in separate statements: the check is deferred to commit.
        cursor.execute(
            "INSERT INTO billing_entry (transaction_id, account_id, amount_micros) VALUES (%s, %s, -100)",
            [txn, a.pk],
        )
        cursor.execute(
            "INSERT INTO billing_entry (transaction_id, account_id, amount_micros) VALUES (%s, %s, 100)",
            [txn, b.pk],
        )

    assert Transaction.objects.get(idempotency_key="raw-balanced").entries.count() == 2


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE billing_entry SET amount_micros = amount_micros + 1",
        "DELETE FROM billing_entry",
        "UPDATE billing_transaction SET memo = 'edited'",
        "DELETE FROM billing_transaction",
    ],
)
def test_journal_is_append_only(sql: str) -> None:
    fund(make_user(), 5_000_000)

    with pytest.raises(IntegrityError, match="append-only"), connection.cursor() as cursor:
        cursor.execute(sql)


def test_python_refuses_unbalanced_posting_and_duplicate_keys_post_once() -> None:
    a = account_get(kind=AccountKind.STRIPE_CLEARING)
    b = account_get(kind=AccountKind.BUYER_WALLET, user_id=make_user().pk)
    unbalanced = Posting("top_up", "py-unbalanced", "USD")
    unbalanced.add(a.pk, -5)
    unbalanced.add(b.pk, 4)
    with pytest.raises(ValueError, match="does not balance"), transaction.atomic():
        posting_write(unbalanced)

    for _ in range(3):
        posting = Posting("top_up", "py-once", "USD")
        posting.add(a.pk, -5)
        posting.add(b.pk, 5)
        with transaction.atomic():
            accounts_lock([a.pk, b.pk])
            posting_write(posting)

    b.refresh_from_db()
    assert b.balance_micros == 5
    assert ledger_reconcile().ok


def test_unique_idempotency_key_in_the_database() -> None:
    Transaction.objects.create(kind="top_up", idempotency_key="dup", currency="USD", posted_at=T0)
    with pytest.raises(IntegrityError), transaction.atomic():
        Transaction.objects.create(kind="top_up", idempotency_key="dup", currency="USD", posted_at=T0)


def test_reconciliation_reports_drift_in_cached_balances() -> None:
    buyer = make_user()
    fund(buyer, 7_000_000)
    wallet = account_get(kind=AccountKind.BUYER_WALLET, user_id=buyer.pk)
    assert ledger_reconcile().ok

    with connection.cursor() as cursor:  # simulate a bug writing the cache directly
        cursor.execute(
            "UPDATE billing_account SET balance_micros = balance_micros + 1 WHERE id = %s", [wallet.pk]
        )

    report = ledger_reconcile()
    assert [(d.account_id, d.cached_micros, d.journal_micros) for d in report.drift] == [
        (wallet.pk, 7_000_001, 7_000_000)
    ]


def test_finalized_statement_rejects_update_and_delete_even_in_raw_sql() -> None:
    user = make_user()
    statement = Statement.objects.create(
        kind=StatementKind.BUYER_INVOICE, user=user, currency="USD", period_start=T0.date().replace(day=1)
    )
    Statement.objects.filter(pk=statement.pk).update(total_micros=5)  # drafts may change
    Statement.objects.filter(pk=statement.pk).update(status=StatementStatus.FINALIZED)

    for sql in (
        "UPDATE billing_statement SET total_micros = 6 WHERE id = %s",
        "DELETE FROM billing_statement WHERE id = %s",
    ):
        with (
            pytest.raises(IntegrityError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, [statement.pk])
    statement.refresh_from_db()
    assert statement.total_micros == 5


def test_leg_added_after_an_immediate_check_is_checked_again() -> None:
    # The trigger remembers a balanced transaction only until the next INSERT into the journal.
    a = account_get(kind=AccountKind.STRIPE_CLEARING)
    b = account_get(kind=AccountKind.BUYER_WALLET, user_id=make_user().pk)

    def write() -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            txn = raw_transaction(cursor, "raw-late-leg")
            cursor.execute(
                "INSERT INTO billing_entry (transaction_id, account_id, amount_micros) VALUES (%s, %s, -5), (%s, %s, 5)",
                [txn, a.pk, txn, b.pk],
            )
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # checked (balanced) and remembered
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")
            cursor.execute(
                "INSERT INTO billing_entry (transaction_id, account_id, amount_micros) VALUES (%s, %s, 1)",
                [txn, b.pk],
            )

    with pytest.raises(DatabaseError, match="does not balance"):
        write()
    assert not Transaction.objects.filter(idempotency_key="raw-late-leg").exists()
