//! The end of timed mutes.
//!
//! The store keeps a `(muted until, conversation, user)` index of timed mutes, written with
//! the mute itself. One task sleeps (on the injected clock) until the earliest deadline, then
//! ends every mute that is due as an unmute by the server would: the member's record and list
//! entry are cleared, and a MEMBERS_UNMUTED event (`by` empty) is logged for the member and
//! pushed live to the other members. An entry whose mute was lifted, replaced or whose member
//! or conversation is gone is only deleted. Muting wakes the task, since its deadline may come
//! first; on start the task runs at once, so what ended while the server was down goes first.

use super::writer::wait;
use super::{Caller, Error, Registry};
use crate::protocol::pb::ConversationEventKind as Ev;
use crate::store::{Op, UserId};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Index entries handled per round.
const ROUND: usize = 256;

/// Runs the sweep until `shutdown`.
pub async fn run(registry: Arc<Registry>, shutdown: CancellationToken) {
    super::expiry::deadlines(
        &registry,
        &shutdown,
        "mutes",
        |r| &r.mutes_changed,
        |r| Ok(r.store.next_mute_deadlines(1)?.first().map(|e| e.0)),
        |r| r.end_mutes(),
    )
    .await;
}

impl Registry {
    /// Ends every timed mute whose deadline has passed.
    async fn end_mutes(&self) -> Result<(), Error> {
        loop {
            let now = self.now();
            let due: Vec<(i64, u64, UserId)> = self
                .store
                .next_mute_deadlines(ROUND)?
                .into_iter()
                .take_while(|(at, ..)| *at <= now)
                .collect();
            if due.is_empty() {
                return Ok(());
            }
            let mut pending = Vec::with_capacity(due.len());
            for (at, conv, user) in due {
                pending.push(self.end_mute(at, conv, user).await?);
            }
            for rx in pending {
                wait(rx).await?;
            }
        }
    }

    /// Ends one mute (or drops its stale index entry).
    async fn end_mute(
        &self,
        at: i64,
        conv: u64,
        user: UserId,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<(), super::writer::WriteError>>, Error> {
        let permit = self.writer.reserve().await?;
        let unindex = Op::DeleteMuteDeadline {
            at,
            conv,
            user: user.clone(),
        };
        let cell = match self.cell_by_num(conv) {
            Ok(c) => c,
            Err(Error::ConversationNotFound) => {
                return Ok(self.writer.submit(permit, vec![unindex], vec![], vec![]));
            }
            Err(e) => return Err(e),
        };
        let mut st = cell.lock();
        let current =
            st.require_live().is_ok() && st.members.get(&user).is_some_and(|m| m.muted_until == at);
        if !current {
            return Ok(self.writer.submit(permit, vec![unindex], vec![], vec![]));
        }
        if let Some(m) = st.members.get_mut(&user) {
            m.muted_until = 0;
        }
        let mut ops = vec![unindex];
        self.put_member(&mut st, cell.num, &user, &mut ops)?;
        let server = Caller::admin("");
        let event = self.event(
            Ev::MembersUnmuted,
            &cell,
            "",
            vec![user.to_string()],
            st.view(&cell.id),
        );
        let (live, logged, _) = self.tell(&mut st, cell.num, &server, event, &[user], &mut ops)?;
        Ok(self.writer.submit(permit, ops, live, logged))
    }
}
