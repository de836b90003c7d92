"""An at-least-once message consumer made exactly-once-in-effect with idem_once.

The broker may deliver a message more than once, out of order, and to several
consumers at the same time.  The consumer records the message id with
idem_once() in the SAME transaction as its effect, so the record and the effect
commit together or not at all.  Here that transaction is ONE statement, sent in
autocommit: one round trip per message (or per batch).

  * first delivery: idem_once() returns true, the effect is applied, the
    statement commits;
  * redelivery after that commit: idem_once() returns false, nothing is done;
  * a concurrent delivery of the same message waits inside idem_once() for the
    first statement's transaction to end, then gets false (it committed) or
    true (it rolled back);
  * a crash before the statement commits rolls back the effect and the id
    together, so the redelivery applies the message as if it were the first.

Acknowledge the message to the broker only after handle() returns.

handle_batch() does the same for a whole batch (brokers hand out 10 to 1,000
messages at a time) with one idem_once_batch() call: the ids it returns are the
new ones, and only their effects are applied, all in one statement.
"""

from dataclasses import dataclass

import psycopg

SCOPE = "ledger-consumer"  # one scope per consumer: another consumer may see the same ids

# idem_once() is evaluated once, in the CTE `once` (a CTE with a volatile
# function is never inlined), before either effect: both are gated on its
# result.  The data-modifying CTE `credit` runs whether or not the INSERT
# refers to it.  The ledger INSERT does not depend on the UPDATE having found
# the account: an unknown account fails the foreign key and rolls everything
# back, rather than recording the id without its effect.
HANDLE = """
WITH once AS (
    SELECT idem_once(%(id)s, scope => %(scope)s) AS first
), credit AS (
    UPDATE accounts SET balance = balance + %(amount)s
     WHERE id = %(account)s AND (SELECT first FROM once)
)
INSERT INTO ledger (message_id, account, amount)
SELECT %(id)s, %(account)s, %(amount)s WHERE (SELECT first FROM once)
"""

# The batch: idem_once_batch() once (the CTE `new`), then one row per new id
# (an id that occurs twice in the batch is new at its first place only, and is
# applied once).  The accounts are locked in id order (`locked`, FOR UPDATE
# after ORDER BY), and the UPDATE reaches an account only through `locked`, so
# every row it updates is already locked: two consumers whose batches touch
# the same accounts wait for each other instead of deadlocking.  The message
# ids are locked first, inside idem_once_batch, in one order too.
HANDLE_BATCH = """
WITH new AS (
    SELECT idem_once_batch(%(ids)s::text[], scope => %(scope)s) AS ids
), fresh AS (
    SELECT DISTINCT ON (m.id) m.id, m.account, m.amount
      FROM new, unnest(%(ids)s::text[], %(accounts)s::int[], %(amounts)s::int[])
                WITH ORDINALITY AS m(id, account, amount, place)
     WHERE m.id = ANY (new.ids)
     ORDER BY m.id, m.place
), locked AS (
    SELECT a.id FROM accounts a
     WHERE a.id IN (SELECT account FROM fresh)
     ORDER BY a.id FOR UPDATE
), credit AS (
    UPDATE accounts a SET balance = a.balance + d.amount
      FROM (SELECT l.id, sum(f.amount) AS amount
              FROM locked l JOIN fresh f ON f.account = l.id
             GROUP BY l.id) d
     WHERE a.id = d.id
)
INSERT INTO ledger (message_id, account, amount)
SELECT id, account, amount FROM fresh
RETURNING message_id
"""


@dataclass(frozen=True)
class Message:
    id: str
    account: int
    amount: int


def handle(conn: psycopg.Connection, msg: Message) -> bool:
    """Apply msg once.  Return True if this call applied it, False if it was a duplicate.

    conn must be in autocommit mode: the statement is the whole transaction.
    """
    cur = conn.execute(
        HANDLE,
        {"id": msg.id, "scope": SCOPE, "account": msg.account, "amount": msg.amount},
        prepare=True,
    )
    return cur.rowcount == 1


def handle_batch(conn: psycopg.Connection, msgs: list[Message]) -> list[bool]:
    """Apply a batch of messages once each, in one statement (autocommit).

    Returns, per message of msgs, True if this call applied it, False if it is
    a duplicate (seen before, or earlier in the same batch).  The batch commits
    or rolls back as a whole: after a crash every message of it is redelivered.
    """
    new = {row[0] for row in conn.execute(
        HANDLE_BATCH,
        {
            "ids": [m.id for m in msgs],
            "scope": SCOPE,
            "accounts": [m.account for m in msgs],
            "amounts": [m.amount for m in msgs],
        },
        prepare=True,
    )}
    applied = []
    for m in msgs:
        applied.append(m.id in new)
        new.discard(m.id)  # a copy later in the batch is a duplicate
    return applied
