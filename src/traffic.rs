//! Requests by kind and outcome, and frames and bytes by dialect, for `/metrics`.
//!
//! Every count is one relaxed atomic add into a table allocated at start and indexed by a
//! closed set: the native request kinds (the `ClientFrame` body), the LeanCloud commands
//! tidings serves (`cmd` and `op`), and the error codes of each dialect. Nothing is locked or
//! allocated per request, and no label ever carries a user or conversation id: an unknown
//! command counts as `other`.

use crate::leancloud::ErrorCode as LcErrorCode;
use crate::leancloud::pb::{CommandType as Cmd, GenericCommand, OpType as Op};
use crate::protocol::ServerFrame;
use crate::protocol::pb::{client_frame::Body as Req, server_frame::Body as Rep};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Native error codes below this have a slot each (slot 0: answered without an error); any
/// other code counts in the last slot, `other`.
const NATIVE_CODES: usize = 96;

macro_rules! native_kinds {
    ($($variant:ident => $name:literal,)*) => {
        /// The native request kinds, as labels (the `ClientFrame` field names).
        const NATIVE_NAMES: &[&str] = &[$($name,)* "other"];

        #[repr(usize)]
        #[allow(dead_code)]
        enum NativeKind { $($variant,)* Other }

        /// The kind of a native request.
        pub fn native_kind(body: Option<&Req>) -> usize {
            (match body {
                $(Some(Req::$variant(_)) => NativeKind::$variant,)*
                #[allow(unreachable_patterns)]
                _ => NativeKind::Other,
            }) as usize
        }
    };
}

native_kinds! {
    Login => "login",
    Logout => "logout",
    Ping => "ping",
    RefreshToken => "refresh_token",
    CreateConversation => "create_conversation",
    GetConversation => "get_conversation",
    AddMembers => "add_members",
    RemoveMembers => "remove_members",
    LeaveConversation => "leave_conversation",
    UpdateConversation => "update_conversation",
    SetMuted => "set_muted",
    ListMembers => "list_members",
    CountMembers => "count_members",
    SendMessage => "send_message",
    SyncMessages => "sync_messages",
    FetchHistory => "fetch_history",
    MarkRead => "mark_read",
    DeleteMessages => "delete_messages",
    RecallMessage => "recall_message",
    EditMessage => "edit_message",
    AckDelivered => "ack_delivered",
    QueryPresence => "query_presence",
    SubscribePresence => "subscribe_presence",
    UnsubscribePresence => "unsubscribe_presence",
    SetWill => "set_will",
    ClearWill => "clear_will",
    ListConversations => "list_conversations",
    GetListEntry => "get_list_entry",
    SetEntryExt => "set_entry_ext",
    PinConversation => "pin_conversation",
    DeleteListEntries => "delete_list_entries",
    DeleteConversation => "delete_conversation",
    SetMemberRole => "set_member_role",
    TransferOwnership => "transfer_ownership",
    MuteMembers => "mute_members",
    UnmuteMembers => "unmute_members",
    SetMuteAll => "set_mute_all",
    ListMutedMembers => "list_muted_members",
    BlockMembers => "block_members",
    UnblockMembers => "unblock_members",
    ListBlockedMembers => "list_blocked_members",
    BlockUser => "block_user",
    UnblockUser => "unblock_user",
    ListBlockedUsers => "list_blocked_users",
    SetProfile => "set_profile",
    GetProfiles => "get_profiles",
    JoinConversation => "join_conversation",
}

/// The LeanCloud commands counted by name (`cmd` and, when it has one, `op`); any other
/// counts as `other`.
const LEANCLOUD_KINDS: &[(Cmd, Option<Op>)] = &[
    (Cmd::Session, Some(Op::Open)),
    (Cmd::Session, Some(Op::Close)),
    (Cmd::Session, Some(Op::Refresh)),
    (Cmd::Session, Some(Op::Query)),
    (Cmd::Direct, None),
    (Cmd::Ack, None),
    (Cmd::Read, None),
    (Cmd::Logs, None),
    (Cmd::Echo, None),
    (Cmd::Conv, Some(Op::Start)),
    (Cmd::Conv, Some(Op::Add)),
    (Cmd::Conv, Some(Op::Remove)),
    (Cmd::Conv, Some(Op::Join)),
    (Cmd::Conv, Some(Op::Query)),
    (Cmd::Conv, Some(Op::Update)),
    (Cmd::Conv, Some(Op::Members)),
    (Cmd::Conv, Some(Op::IsMember)),
    (Cmd::Conv, Some(Op::MaxRead)),
    (Cmd::Conv, Some(Op::Count)),
    (Cmd::Conv, Some(Op::Mute)),
    (Cmd::Conv, Some(Op::Unmute)),
    (Cmd::Conv, Some(Op::Subscribe)),
    (Cmd::Conv, Some(Op::Unsubscribe)),
    (Cmd::Conv, Some(Op::IsSubscribed)),
    (Cmd::Conv, Some(Op::MemberInfoUpdate)),
    (Cmd::Conv, Some(Op::AddShutup)),
    (Cmd::Conv, Some(Op::RemoveShutup)),
    (Cmd::Conv, Some(Op::QueryShutup)),
    (Cmd::Blacklist, Some(Op::Block)),
    (Cmd::Blacklist, Some(Op::Unblock)),
    (Cmd::Blacklist, Some(Op::Query)),
    (Cmd::Patch, Some(Op::Modify)),
];

/// The kind of a LeanCloud command (its `cmd` and `op` numbers as sent).
pub fn leancloud_kind(cmd: Option<i32>, op: Option<i32>) -> usize {
    // Commands whose op is ignored are counted under their name alone.
    let op = match cmd.and_then(|c| Cmd::try_from(c).ok()) {
        Some(Cmd::Direct | Cmd::Ack | Cmd::Read | Cmd::Logs | Cmd::Echo) => None,
        _ => op,
    };
    LEANCLOUD_KINDS
        .iter()
        .position(|(c, o)| Some(*c as i32) == cmd && o.map(|o| o as i32) == op)
        .unwrap_or(LEANCLOUD_KINDS.len())
}

/// The dialects frames are counted by.
#[derive(Debug, Clone, Copy)]
pub enum Dialect {
    Native = 0,
    LeanCloud = 1,
}

const DIALECTS: [&str; 2] = ["native", "leancloud"];

/// The forms a push is encoded in for sessions: once per push and form, whatever the number
/// of recipients (LeanCloud's per-recipient envelope is not counted: only its body is shared).
#[derive(Debug, Clone, Copy)]
pub enum Form {
    Native = 0,
    Json = 1,
    LeanCloud = 2,
}

const FORMS: [&str; 3] = ["native", "json", "leancloud"];

/// The counts (one per server).
#[derive(Debug)]
pub struct Traffic {
    /// `native kind * NATIVE_CODES + outcome`.
    native: Box<[AtomicU64]>,
    /// `leancloud kind * (codes + 2) + outcome` (0: ok, then `LcErrorCode::ALL`, then other).
    leancloud: Box<[AtomicU64]>,
    frames_in: [AtomicU64; 2],
    bytes_in: [AtomicU64; 2],
    frames_out: [AtomicU64; 2],
    bytes_out: [AtomicU64; 2],
    encodings: [AtomicU64; 3],
}

fn table(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

const LC_OUTCOMES: usize = LcErrorCode::ALL.len() + 2;

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            native: table(NATIVE_NAMES.len() * NATIVE_CODES),
            leancloud: table((LEANCLOUD_KINDS.len() + 1) * LC_OUTCOMES),
            frames_in: Default::default(),
            bytes_in: Default::default(),
            frames_out: Default::default(),
            bytes_out: Default::default(),
            encodings: Default::default(),
        }
    }
}

/// One row of the request counts: dialect, kind, outcome (`ok` or an error code's name), count.
pub struct RequestCount {
    pub dialect: &'static str,
    pub kind: String,
    pub code: String,
    pub count: u64,
}

/// One dialect's frames and bytes in and out.
pub struct FrameCounts {
    pub dialect: &'static str,
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
}

impl Traffic {
    /// A native request of `kind` ([`native_kind`]) answered with `reply`.
    pub fn native(&self, kind: usize, reply: &ServerFrame) {
        let outcome = match &reply.body {
            Some(Rep::Error(e)) if e.code > 0 && (e.code as usize) < NATIVE_CODES => {
                e.code as usize
            }
            Some(Rep::Error(_)) => NATIVE_CODES - 1,
            _ => 0,
        };
        self.native_outcome(kind, outcome);
    }

    /// A native request of `kind` answered without an error.
    pub fn native_ok(&self, kind: usize) {
        self.native_outcome(kind, 0);
    }

    fn native_outcome(&self, kind: usize, outcome: usize) {
        if let Some(c) = self.native.get(kind * NATIVE_CODES + outcome) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// A LeanCloud command of `kind` ([`leancloud_kind`]) answered with `reply` (`None`: one
    /// that takes no answer, such as a delivery ack).
    pub fn leancloud(&self, kind: usize, reply: Option<&GenericCommand>) {
        let code = reply.and_then(|c| {
            c.error_message
                .as_ref()
                .map(|e| e.code)
                .or_else(|| c.ack_message.as_ref().and_then(|a| a.code))
                .or_else(|| c.session_message.as_ref().and_then(|s| s.code))
        });
        let outcome = match code {
            None => 0,
            Some(code) => LcErrorCode::ALL
                .iter()
                .position(|c| c.code() == code)
                .map_or(LC_OUTCOMES - 1, |i| i + 1),
        };
        if let Some(c) = self.leancloud.get(kind * LC_OUTCOMES + outcome) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// A data frame of `bytes` read from a client.
    pub fn frame_in(&self, dialect: Dialect, bytes: usize) {
        self.frames_in[dialect as usize].fetch_add(1, Relaxed);
        self.bytes_in[dialect as usize].fetch_add(bytes as u64, Relaxed);
    }

    /// `frames` data frames of `bytes` in all handed to a client's socket.
    pub fn frames_out(&self, dialect: Dialect, frames: usize, bytes: usize) {
        self.frames_out[dialect as usize].fetch_add(frames as u64, Relaxed);
        self.bytes_out[dialect as usize].fetch_add(bytes as u64, Relaxed);
    }

    /// A session encoded a push in `form` (the first of that form to write it).
    pub fn encoded(&self, form: Form) {
        self.encodings[form as usize].fetch_add(1, Relaxed);
    }

    /// Pushes encoded for sessions, by form.
    pub fn encodings(&self) -> [(&'static str, u64); 3] {
        std::array::from_fn(|f| (FORMS[f], self.encodings[f].load(Relaxed)))
    }

    /// The request counts that are not zero (read at scrape time).
    pub fn requests(&self) -> Vec<RequestCount> {
        let mut out = Vec::new();
        for (i, c) in self.native.iter().enumerate() {
            let count = c.load(Relaxed);
            if count == 0 {
                continue;
            }
            let (kind, outcome) = (i / NATIVE_CODES, i % NATIVE_CODES);
            let code = match outcome {
                0 => "ok",
                n => crate::protocol::pb::ErrorCode::try_from(n as i32)
                    .map_or("other", |c| c.as_str_name()),
            };
            out.push(RequestCount {
                dialect: DIALECTS[0],
                kind: NATIVE_NAMES[kind].to_owned(),
                code: code.to_owned(),
                count,
            });
        }
        for (i, c) in self.leancloud.iter().enumerate() {
            let count = c.load(Relaxed);
            if count == 0 {
                continue;
            }
            let (kind, outcome) = (i / LC_OUTCOMES, i % LC_OUTCOMES);
            let kind = match LEANCLOUD_KINDS.get(kind) {
                Some((c, None)) => c.as_str_name().to_owned(),
                Some((c, Some(o))) => format!("{}.{}", c.as_str_name(), o.as_str_name()),
                None => "other".to_owned(),
            };
            let code = match outcome {
                0 => "ok".to_owned(),
                n => LcErrorCode::ALL
                    .get(n - 1)
                    .map_or("other".to_owned(), |c| c.code().to_string()),
            };
            out.push(RequestCount {
                dialect: DIALECTS[1],
                kind,
                code,
                count,
            });
        }
        out
    }

    /// Frames and bytes in and out, by dialect.
    pub fn frames(&self) -> [FrameCounts; 2] {
        std::array::from_fn(|d| FrameCounts {
            dialect: DIALECTS[d],
            frames_in: self.frames_in[d].load(Relaxed),
            bytes_in: self.bytes_in[d].load(Relaxed),
            frames_out: self.frames_out[d].load(Relaxed),
            bytes_out: self.bytes_out[d].load(Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_a_closed_set() {
        assert_eq!(
            native_kind(Some(&Req::Ping(Default::default()))),
            NATIVE_NAMES.iter().position(|n| *n == "ping").unwrap()
        );
        assert_eq!(native_kind(None), NATIVE_NAMES.len() - 1);
        let start = leancloud_kind(Some(Cmd::Conv as i32), Some(Op::Start as i32));
        assert_eq!(LEANCLOUD_KINDS[start], (Cmd::Conv, Some(Op::Start)));
        // `direct` ignores its op; an unknown pair is `other`.
        let direct = leancloud_kind(Some(Cmd::Direct as i32), Some(Op::Open as i32));
        assert_eq!(LEANCLOUD_KINDS[direct], (Cmd::Direct, None));
        assert_eq!(
            leancloud_kind(Some(Cmd::Conv as i32), Some(9999)),
            LEANCLOUD_KINDS.len()
        );
        let t = Traffic::default();
        t.leancloud(LEANCLOUD_KINDS.len(), None);
        t.native(native_kind(None), &ServerFrame::default());
        let rows = t.requests();
        assert!(rows.iter().all(|r| r.kind == "other" && r.code == "ok"));
        assert_eq!(rows.len(), 2);
    }
}
