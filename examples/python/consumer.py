"""An at-least-once message consumer made exactly-once-in-effect with idem_once.

The broker may deliver a message more than once, out of order, and to several
consumers at the same time.  The consumer records the message id with
idem_once() in the SAME transaction as its effect, so the record and the effect
commit together or not at all:

  * first delivery: idem_once() returns true, the effect is applied, COMMIT;
  * redelivery after that commit: idem_once() returns false, nothing is done;
  * a concurrent delivery of the same message waits for the first transaction
    to end, then gets false (it committed) or true (it rolled back);
  * a crash before COMMIT rolls back the effect and the id together, so the
    redelivery applies the message as if it were the first.

Acknowledge the message to the broker only after handle() returns.

handle_batch() does the same for a whole batch (brokers hand out 10 to 1,000
messages at a time) with one idem_once_batch() call: the ids it returns are the
new ones, and only their effects are applied, all in one transaction.
"""

from dataclasses import dataclass

import psycopg

SCOPE = "ledger-consumer"  # one scope per consumer: another consumer may see the same ids


@dataclass(frozen=True)
class Message:
    id: str
    account: int
    amount: int


def handle(conn: psycopg.Connection, msg: Message, before_commit=None) -> bool:
    """Apply msg once.  Return True if this call applied it, False if it was a duplicate.

    conn must be in autocommit mode, so that conn.transaction() is the whole
    transaction.  before_commit is a hook for tests (to simulate a crash).
    """
    with conn.transaction():
        first = conn.execute(
            "SELECT idem_once(%s, scope => %s)", (msg.id, SCOPE)
        ).fetchone()[0]
        if not first:
            return False  # already applied by a committed transaction: just ack
        conn.execute(
            "UPDATE accounts SET balance = balance + %s WHERE id = %s",
            (msg.amount, msg.account),
        )
        conn.execute(
            "INSERT INTO ledger (message_id, account, amount) VALUES (%s, %s, %s)",
            (msg.id, msg.account, msg.amount),
        )
        if before_commit is not None:
            before_commit(conn)
    return True


def handle_batch(conn: psycopg.Connection, msgs: list[Message], before_commit=None) -> list[bool]:
    """Apply a batch of messages once each, in one transaction.

    Returns, per message of msgs, True if this call applied it, False if it is
    a duplicate (seen before, or earlier in the same batch).  The batch commits
    or rolls back as a whole: after a crash every message of it is redelivered.
    """
    applied = [False] * len(msgs)
    with conn.transaction():
        new = set(conn.execute(
            "SELECT idem_once_batch(%s, scope => %s)", ([m.id for m in msgs], SCOPE)
        ).fetchone()[0])
        fresh = []
        for i, m in enumerate(msgs):
            if m.id in new:
                new.discard(m.id)  # a copy later in the batch is a duplicate
                applied[i] = True
                fresh.append(m)
        if fresh:
            # lock the accounts in one order, so that two consumers whose batches
            # touch the same accounts wait for each other instead of deadlocking
            conn.execute(
                "SELECT 1 FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                (sorted({m.account for m in fresh}),),
            )
            conn.execute(
                "UPDATE accounts a SET balance = a.balance + d.amount"
                " FROM (SELECT account, sum(amount) AS amount"
                "       FROM unnest(%s::int[], %s::int[]) AS u(account, amount)"
                "       GROUP BY account) d"
                " WHERE a.id = d.account",
                ([m.account for m in fresh], [m.amount for m in fresh]),
            )
            conn.execute(
                "INSERT INTO ledger (message_id, account, amount)"
                " SELECT * FROM unnest(%s::text[], %s::int[], %s::int[])",
                ([m.id for m in fresh], [m.account for m in fresh], [m.amount for m in fresh]),
            )
        if before_commit is not None:
            before_commit(conn)
    return applied
