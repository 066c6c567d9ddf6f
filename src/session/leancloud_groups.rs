//! The LeanCloud dialect of group control: member roles (`conv/member_info_update`,
//! `_ConversationMemberInfo`), muted members (`conv/*_shutup`), the conversation blacklist
//! (`blacklist/*`) and per-id answers to `conv/add` and `conv/remove`. Everything is decided
//! by the registry ([`crate::registry::groups`]); this only translates.

use super::leancloud::{command, error_code, error_command, iso, verify_session_token};
use crate::app::App;
use crate::leancloud::ErrorCode;
use crate::leancloud::pb::{self as lc, CommandType as Cmd, GenericCommand, OpType as Op};
use crate::protocol::pb::{self, ConversationEventKind as Ev, MemberRole};
use crate::registry::groups::MemberOutcome;
use crate::registry::limits::Work;
use crate::registry::{Caller, Error};
use crate::store::UserId;

/// LeanCloud's page size for muted and blocked members when the client names none.
const LC_PAGE_DEFAULT: u32 = 10;

/// LeanCloud's name of a role.
pub(super) fn role_name(role: MemberRole) -> &'static str {
    match role {
        MemberRole::Owner => "Owner",
        MemberRole::Manager => "Manager",
        MemberRole::Member => "Member",
    }
}

fn role_of_name(name: &str) -> Option<MemberRole> {
    match name.to_ascii_lowercase().as_str() {
        "manager" => Some(MemberRole::Manager),
        "member" => Some(MemberRole::Member),
        "owner" => Some(MemberRole::Owner),
        _ => None,
    }
}

/// The failures of a per-id answer, one `ErrorCommand` per code (each naming its ids).
fn failures(failed: Vec<(String, Error)>) -> Vec<lc::ErrorCommand> {
    let mut out: Vec<lc::ErrorCommand> = Vec::new();
    for (id, e) in failed {
        let (code, _) = error_code(&e, false);
        match out.iter_mut().find(|f| f.code == code.code()) {
            Some(f) => f.pids.push(id),
            None => out.push(lc::ErrorCommand {
                code: code.code(),
                reason: code.reason().to_owned(),
                detail: Some(e.to_string()),
                pids: vec![id],
                ..Default::default()
            }),
        }
    }
    out
}

/// A request refused as a whole fails for every id it named (the SDKs answer per id), unless
/// the server could not do it at all.
fn per_id(outcome: Result<MemberOutcome, Error>, ids: &[String]) -> Result<MemberOutcome, Error> {
    outcome.or_else(|e| match e {
        Error::Unavailable | Error::Internal | Error::RateLimited { .. } => Err(e),
        e => Ok(MemberOutcome {
            conversation: pb::Conversation::default(),
            done: Vec::new(),
            failed: ids.iter().map(|u| (u.clone(), e.clone())).collect(),
        }),
    })
}

fn partial_reply(op: Op, o: MemberOutcome) -> GenericCommand {
    GenericCommand {
        conv_message: Some(lc::ConvCommand {
            allowed_pids: o.done,
            failed_pids: failures(o.failed),
            ..Default::default()
        }),
        ..command(Cmd::Conv, Some(op))
    }
}

/// `conv/add` and `conv/remove`: per-id answers (`allowedPids`, `failedPids`). A client that
/// removes only itself quits (`quit()`), which the owner may not do (4324).
pub(super) async fn add_or_remove(
    app: &App,
    caller: &Caller,
    op: Op,
    c: lc::ConvCommand,
) -> Result<GenericCommand, Error> {
    let reg = &app.registry;
    let id = c.cid.unwrap_or_default();
    let me_only = c.m.len() == 1 && *c.m[0] == *caller.user;
    let outcome = match op {
        // `join()`: an open group, a chat room, a system conversation's `subscribe()`.
        Op::Add if me_only => reg
            .join_conversation(caller, &id)
            .await
            .map(|conversation| MemberOutcome {
                conversation,
                done: c.m.clone(),
                failed: Vec::new(),
            }),
        Op::Add => reg.add_members_each(caller, &id, &c.m, false, true).await,
        _ if me_only => reg.quit(caller, &id).await.map(|()| MemberOutcome {
            conversation: pb::Conversation::default(),
            done: c.m.clone(),
            failed: Vec::new(),
        }),
        _ => reg.remove_members_each(caller, &id, &c.m, true).await,
    };
    let outcome = per_id(outcome, &c.m)?;
    Ok(partial_reply(
        if op == Op::Add {
            Op::Added
        } else {
            Op::Removed
        },
        outcome,
    ))
}

/// Runs a role, shutup or blacklist command; the reply, or `None` when none is expected.
pub(super) async fn handle(
    app: &App,
    caller: &Caller,
    kind: Cmd,
    op: Option<Op>,
    cmd: GenericCommand,
) -> Option<GenericCommand> {
    let i = cmd.i;
    let reg = &app.registry;
    let result: Result<GenericCommand, Error> = match (kind, op) {
        (Cmd::Conv, Some(Op::MemberInfoUpdate)) => {
            let c = cmd.conv_message.unwrap_or_default();
            let info = c.info.unwrap_or_default();
            let target = c.target_client_id.or(info.pid).unwrap_or_default();
            match info.role.as_deref().and_then(role_of_name) {
                None => Err(Error::InvalidArgument(
                    "role must be Manager or Member".into(),
                )),
                Some(role) => reg
                    .set_member_role(
                        caller,
                        c.cid.as_deref().unwrap_or_default(),
                        &[target],
                        role,
                    )
                    .await
                    .map(|_| command(Cmd::Conv, Some(Op::MemberInfoUpdated))),
            }
        }
        (Cmd::Conv, Some(op @ (Op::AddShutup | Op::RemoveShutup))) => {
            let c = cmd.conv_message.unwrap_or_default();
            let id = c.cid.unwrap_or_default();
            let outcome = if op == Op::AddShutup {
                reg.mute_members(caller, &id, &c.m, 0, true).await
            } else {
                reg.unmute_members(caller, &id, &c.m, true).await
            };
            per_id(outcome, &c.m).map(|o| {
                partial_reply(
                    if op == Op::AddShutup {
                        Op::ShutupAdded
                    } else {
                        Op::ShutupRemoved
                    },
                    o,
                )
            })
        }
        (Cmd::Conv, Some(Op::QueryShutup)) => {
            let c = cmd.conv_message.unwrap_or_default();
            let limit = c
                .limit
                .filter(|l| *l > 0)
                .map_or(LC_PAGE_DEFAULT, |l| l as u32);
            reg.list_muted_members(
                caller,
                c.cid.as_deref().unwrap_or_default(),
                c.next.as_deref().unwrap_or_default(),
                limit.min(app.config.member_page_max),
            )
            .map(|(members, next, more)| GenericCommand {
                conv_message: Some(lc::ConvCommand {
                    m: members.into_iter().map(|m| m.user_id).collect(),
                    next: more.then_some(next),
                    ..Default::default()
                }),
                ..command(Cmd::Conv, Some(Op::ShutupResult))
            })
        }
        // No SDK sends these; the ops are the SDKs' own (`check_shutup`, `check_block`,
        // `check_result`), the fields those its other commands use.
        (Cmd::Conv, Some(Op::CheckShutup)) => {
            let c = cmd.conv_message.unwrap_or_default();
            let id = c.cid.unwrap_or_default();
            reg.silenced_among(caller, &id, &c.m)
                .map(|m| GenericCommand {
                    conv_message: Some(lc::ConvCommand {
                        cid: Some(id),
                        m,
                        ..Default::default()
                    }),
                    ..command(Cmd::Conv, Some(Op::CheckResult))
                })
        }
        (Cmd::Blacklist, Some(Op::CheckBlock)) => {
            let b = cmd.blacklist_message.unwrap_or_default();
            match b.src_cid {
                // Which of these clients the conversation blocks.
                Some(id) => {
                    reg.blocked_among(caller, &id, &b.to_pids)
                        .map(|blocked| lc::BlacklistCommand {
                            src_cid: Some(id),
                            blocked_pids: blocked,
                            ..Default::default()
                        })
                }
                // Which of these conversations block the client itself.
                None if b.src_pid.as_deref().is_none_or(|p| p == &*caller.user) => reg
                    .blocking_me(caller, &b.to_cids)
                    .map(|cids| lc::BlacklistCommand {
                        src_pid: Some(caller.user.to_string()),
                        blocked_cids: cids,
                        ..Default::default()
                    }),
                None => Err(Error::PermissionDenied(
                    "a client may only check the blacklists it is on",
                )),
            }
            .map(|b| GenericCommand {
                blacklist_message: Some(b),
                ..command(Cmd::Blacklist, Some(Op::CheckResult))
            })
        }
        (Cmd::Blacklist, Some(op @ (Op::Block | Op::Unblock))) => {
            let b = cmd.blacklist_message.unwrap_or_default();
            let action = if op == Op::Block {
                "conversation-block-clients"
            } else {
                "conversation-unblock-clients"
            };
            if !signature_ok(app, caller, &b, action) {
                return i
                    .map(|i| error_command(Some(i), ErrorCode::ConversationSignatureFailed, None));
            }
            let id = b.src_cid.unwrap_or_default();
            let outcome = if op == Op::Block {
                reg.block_members(caller, &id, &b.to_pids, true).await
            } else {
                reg.unblock_members(caller, &id, &b.to_pids).await
            };
            per_id(outcome, &b.to_pids).map(|o| GenericCommand {
                blacklist_message: Some(lc::BlacklistCommand {
                    src_cid: Some(id),
                    allowed_pids: o.done,
                    failed_pids: failures(o.failed),
                    ..Default::default()
                }),
                ..command(
                    Cmd::Blacklist,
                    Some(if op == Op::Block {
                        Op::Blocked
                    } else {
                        Op::Unblocked
                    }),
                )
            })
        }
        (Cmd::Blacklist, Some(Op::Query)) => {
            let b = cmd.blacklist_message.unwrap_or_default();
            let limit = b
                .limit
                .filter(|l| *l > 0)
                .map_or(LC_PAGE_DEFAULT, |l| l as u32);
            let id = b.src_cid.unwrap_or_default();
            reg.list_blocked_members(
                caller,
                &id,
                b.next.as_deref().unwrap_or_default(),
                limit.min(app.config.member_page_max),
            )
            .map(|(users, next, more)| GenericCommand {
                blacklist_message: Some(lc::BlacklistCommand {
                    src_cid: Some(id),
                    blocked_pids: users,
                    next: more.then_some(next),
                    ..Default::default()
                }),
                ..command(Cmd::Blacklist, Some(Op::QueryResult))
            })
        }
        _ => {
            return i.map(|i| {
                error_command(
                    Some(i),
                    ErrorCode::ConversationApiFailed,
                    Some(format!("not supported: {kind:?} {op:?}")),
                )
            });
        }
    };
    let reply = match result {
        Ok(mut c) => {
            c.i = i;
            c
        }
        Err(e) => super::leancloud::failure(i, &e),
    };
    i.map(|_| reply)
}

/// With `leancloud_conversation_signatures`, whether a blacklist command carries a valid,
/// fresh signature over `appid:clientid:convid:sorted_ids:t:nonce:action`.
fn signature_ok(app: &App, caller: &Caller, b: &lc::BlacklistCommand, action: &str) -> bool {
    super::leancloud::signature_ok(
        app,
        caller,
        b.src_cid.as_deref().unwrap_or_default(),
        &b.to_pids,
        (b.s.as_deref(), b.t, b.n.as_deref()),
        Some(action),
    )
}

/// Whether this command is one of this module's.
pub(super) fn is_group_command(kind: Cmd, op: Option<Op>) -> bool {
    matches!(
        (kind, op),
        (
            Cmd::Conv,
            Some(
                Op::MemberInfoUpdate
                    | Op::AddShutup
                    | Op::RemoveShutup
                    | Op::QueryShutup
                    | Op::CheckShutup
            )
        ) | (Cmd::Blacklist, _)
    )
}

/// What these commands cost under the rate limits.
pub(super) fn work_of(op: Option<Op>) -> Work {
    match op {
        Some(Op::QueryShutup | Op::Query | Op::CheckShutup | Op::CheckBlock) => Work::Page,
        _ => Work::Change,
    }
}

/// The LeanCloud push of a group-control event for `peer_id` (`None`: it has none, like
/// mute-all, which LeanCloud's SDKs do not know).
pub(super) fn notification(
    e: &pb::ConversationEvent,
    peer_id: &str,
) -> Option<(Op, lc::ConvCommand)> {
    let me = e.members.iter().any(|m| m == peer_id);
    let others = |op: Op| {
        (
            op,
            lc::ConvCommand {
                m: e.members.clone(),
                ..Default::default()
            },
        )
    };
    let mine = |op: Op| (op, lc::ConvCommand::default());
    let info = |pid: &str, role: MemberRole| {
        (
            Op::MemberInfoChanged,
            lc::ConvCommand {
                info: Some(lc::ConvMemberInfo {
                    pid: Some(pid.to_owned()),
                    role: Some(role_name(role).to_owned()),
                    info_id: None,
                }),
                ..Default::default()
            },
        )
    };
    Some(match Ev::try_from(e.kind).ok()? {
        Ev::RoleChanged => info(
            e.members.first()?,
            MemberRole::try_from(e.role).unwrap_or(MemberRole::Member),
        ),
        Ev::OwnerChanged => info(e.members.first()?, MemberRole::Owner),
        Ev::MembersMuted if me => mine(Op::Shutuped),
        Ev::MembersMuted => others(Op::MembersShutuped),
        Ev::MembersUnmuted if me => mine(Op::Unshutuped),
        Ev::MembersUnmuted => others(Op::MembersUnshutuped),
        Ev::MembersBlocked if me => mine(Op::Blocked),
        Ev::MembersBlocked => others(Op::MembersBlocked),
        Ev::MembersUnblocked if me => mine(Op::Unblocked),
        Ev::MembersUnblocked => others(Op::MembersUnblocked),
        _ => return None,
    })
}

/// `GET /1.1/classes/_ConversationMemberInfo?where={"cid":…}&client_id=…` with the client's
/// session token in `X-LC-IM-Session-Token`: the members of the conversation whose role is not
/// plain member, as `{results: [{objectId, cid, clientId, role}]}` (the SDK takes everyone
/// else for a member).
pub(crate) fn member_info(
    app: &App,
    client_id: Option<&str>,
    where_: Option<&str>,
    session_token: Option<&str>,
) -> (u16, serde_json::Value) {
    use serde_json::json;
    let now = app.clock.now_ms();
    let (Some(peer), Some(st)) = (client_id, session_token) else {
        let code = ErrorCode::InvalidLogin;
        return (
            400,
            json!({"code": code.code(), "error": "client_id and X-LC-IM-Session-Token are required"}),
        );
    };
    if verify_session_token(app, peer, st, now).is_none() {
        let code = ErrorCode::SessionTokenExpired;
        return (401, json!({"code": code.code(), "error": code.reason()}));
    }
    let cid = where_
        .and_then(|w| serde_json::from_str::<serde_json::Value>(w).ok())
        .and_then(|w| w.get("cid").and_then(|c| c.as_str()).map(str::to_owned));
    let Some(cid) = cid else {
        return (
            400,
            json!({"code": 1, "error": "where must name the conversation: {\"cid\": …}"}),
        );
    };
    let user = UserId::from(peer);
    if let Err(e) = app.registry.admit_user(&user, Work::Page) {
        let code = ErrorCode::AppQuotaExceeded;
        return (429, json!({"code": code.code(), "error": e.to_string()}));
    }
    let roles = crate::registry::limits::paid_by_now(user.clone(), || {
        app.registry.member_roles(&Caller::user(user, 0), &cid)
    });
    match roles {
        Ok((id, roles)) => {
            let results: Vec<serde_json::Value> = roles
                .into_iter()
                .map(|(member, role)| {
                    json!({
                        "objectId": format!("{id}:{member}"),
                        "cid": id,
                        "clientId": member,
                        "role": role_name(role),
                        "createdAt": iso(now),
                        "updatedAt": iso(now),
                    })
                })
                .collect();
            (200, json!({ "results": results }))
        }
        Err(e) => {
            let (code, _) = error_code(&e, false);
            let status = match e {
                Error::Unavailable | Error::Internal => 500,
                Error::RateLimited { .. } => 429,
                Error::ConversationNotFound | Error::ConversationExpired => 404,
                _ => 403,
            };
            (status, json!({"code": code.code(), "error": e.to_string()}))
        }
    }
}
