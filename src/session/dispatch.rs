//! One request in, one reply out: maps each `ClientFrame` body to a registry call.

use crate::app::App;
use crate::protocol::pb::{self, client_frame::Body as Req, server_frame::Body as Rep};
use crate::protocol::{ServerFrame, reply};
use crate::registry::conversation::{CreateRequest, UpdateRequest};
use crate::registry::limits::Work;
use crate::registry::users::ProfileUpdate;
use crate::registry::{
    Caller, DeleteMessagesRequest, EditRequest, Error, HistoryRequest, ListRequest, SendRequest,
};
use std::sync::Arc;

/// Handles a request of a logged-in session. `Login`, `Logout`, `Ping`, `RefreshToken` and the
/// presence and will requests are handled by the session itself and never reach here.
pub async fn handle(app: Arc<App>, caller: Caller, id: u64, body: Req) -> ServerFrame {
    let reg = &app.registry;
    let kind = crate::traffic::native_kind(Some(&body));
    let result: Result<Rep, Error> = match body {
        Req::CreateConversation(r) => {
            let kind =
                pb::ConversationKind::try_from(r.kind).unwrap_or(pb::ConversationKind::Unspecified);
            let req = CreateRequest {
                kind,
                members: r.members,
                name: r.name,
                attributes: r.attributes,
                ttl_secs: r.ttl_secs,
                unique: r.unique,
                idempotency: None,
            };
            reg.create(&caller, req).await.map(conversation)
        }
        Req::GetConversation(r) => reg.get(&caller, &r.conversation_id).map(conversation),
        Req::AddMembers(r) => reg
            .add_members(&caller, &r.conversation_id, &r.members)
            .await
            .map(conversation),
        Req::RemoveMembers(r) => reg
            .remove_members(&caller, &r.conversation_id, &r.members)
            .await
            .map(conversation),
        Req::LeaveConversation(r) => reg.leave(&caller, &r.conversation_id).await.map(ok),
        Req::JoinConversation(r) => reg
            .join_conversation(&caller, &r.conversation_id)
            .await
            .map(conversation),
        Req::UpdateConversation(r) => {
            let req = UpdateRequest {
                name: r.name,
                set_attributes: r.set_attributes,
                remove_attributes: r.remove_attributes,
                ttl_secs: None,
            };
            reg.update(&caller, &r.conversation_id, req)
                .await
                .map(conversation)
        }
        Req::SetMuted(r) => reg
            .set_muted(&caller, &r.conversation_id, r.muted)
            .await
            .map(ok),
        Req::ListMembers(r) => reg
            .list_member_infos(&caller, &r.conversation_id, &r.cursor, r.limit)
            .map(|(members, infos, next_cursor, has_more)| {
                Rep::MemberList(pb::MemberList {
                    members,
                    next_cursor,
                    has_more,
                    infos,
                })
            }),
        Req::SetMemberRole(r) => {
            let role = pb::MemberRole::try_from(r.role)
                .map_err(|_| Error::InvalidArgument(format!("unknown role {}", r.role)));
            match role {
                Ok(role) => reg
                    .set_member_role(&caller, &r.conversation_id, &r.members, role)
                    .await
                    .map(|_| ok(())),
                Err(e) => Err(e),
            }
        }
        Req::TransferOwnership(r) => reg
            .transfer_ownership(&caller, &r.conversation_id, &r.new_owner)
            .await
            .map(conversation),
        Req::MuteMembers(r) => reg
            .mute_members(
                &caller,
                &r.conversation_id,
                &r.members,
                r.duration_secs,
                false,
            )
            .await
            .map(|_| ok(())),
        Req::UnmuteMembers(r) => reg
            .unmute_members(&caller, &r.conversation_id, &r.members, false)
            .await
            .map(|_| ok(())),
        Req::SetMuteAll(r) => reg
            .set_mute_all(&caller, &r.conversation_id, r.muted)
            .await
            .map(conversation),
        Req::ListMutedMembers(r) => reg
            .list_muted_members(&caller, &r.conversation_id, &r.cursor, r.limit)
            .map(|(members, next_cursor, has_more)| {
                Rep::MutedMemberList(pb::MutedMemberList {
                    members,
                    next_cursor,
                    has_more,
                })
            }),
        Req::BlockMembers(r) => reg
            .block_members(&caller, &r.conversation_id, &r.members, false)
            .await
            .map(|o| conversation(o.conversation)),
        Req::UnblockMembers(r) => reg
            .unblock_members(&caller, &r.conversation_id, &r.members)
            .await
            .map(|_| ok(())),
        Req::ListBlockedMembers(r) => reg
            .list_blocked_members(&caller, &r.conversation_id, &r.cursor, r.limit)
            .map(|(users, next_cursor, has_more)| {
                Rep::BlockedMemberList(pb::BlockedMemberList {
                    users,
                    next_cursor,
                    has_more,
                })
            }),
        Req::CountMembers(r) => reg
            .count_members(&caller, &r.conversation_id)
            .map(|count| Rep::MemberCount(pb::MemberCount { count })),
        Req::SendMessage(r) => {
            let req = SendRequest {
                client_message_id: r.client_message_id,
                kind: r.r#type,
                content: r.content,
                attributes: r.attributes,
                mentions: r.mentions,
                mention_all: r.mention_all,
                transient: r.transient,
                want_receipts: r.want_receipts,
                silent: false,
            };
            reg.send(&caller, &r.conversation_id, req)
                .await
                .map(Rep::SendAck)
        }
        Req::SyncMessages(r) => reg
            .sync(&caller, &r.conversation_id, r.after_seq, r.limit)
            .map(|(messages, has_more)| page(messages, has_more, String::new())),
        Req::FetchHistory(r) => {
            let id = r.conversation_id.clone();
            reg.history(&caller, &id, HistoryRequest::from_wire(r))
                .map(|(messages, has_more, next)| page(messages, has_more, next))
        }
        Req::MarkRead(r) => reg
            .mark_read(&caller, &r.conversation_id, r.seq)
            .await
            .map(ok),
        Req::AckDelivered(r) => reg
            .ack_delivered(&caller, &r.conversation_id, r.seq)
            .await
            .map(ok),
        Req::DeleteMessages(r) => {
            let req = DeleteMessagesRequest {
                message_ids: r.message_ids,
                before_time: r.before_time,
                inclusive: r.inclusive,
            };
            reg.delete_messages(&caller, &r.conversation_id, req)
                .await
                .map(ok)
        }
        Req::RecallMessage(r) => reg
            .recall(&caller, &r.conversation_id, &r.message_id)
            .await
            .map(message),
        Req::EditMessage(r) => {
            let req = EditRequest {
                message_id: r.message_id,
                content: r.content,
                attributes: r.attributes,
                replace_attributes: r.replace_attributes,
            };
            reg.edit(&caller, &r.conversation_id, req)
                .await
                .map(message)
        }
        Req::ListConversations(r) => {
            let req = ListRequest {
                cursor: r.cursor,
                limit: r.limit,
                updated_after: r.updated_after,
                updated_before: r.updated_before,
                pinned_only: r.pinned_only,
                kind: r.kind,
                omit_last_message: r.omit_last_message,
                max_bytes: 0,
            };
            reg.list_conversations(&caller, req)
                .map(|(entries, next_cursor, has_more)| {
                    Rep::ConversationList(pb::ConversationList {
                        entries,
                        next_cursor,
                        has_more,
                    })
                })
        }
        Req::GetListEntry(r) => reg
            .get_list_entry(&caller, &r.conversation_id, !r.omit_last_message)
            .map(entry),
        Req::SetEntryExt(r) => reg
            .set_entry_ext(&caller, &r.conversation_id, r.ext)
            .await
            .map(entry),
        Req::PinConversation(r) => reg
            .pin(&caller, &r.conversation_id, r.pinned)
            .await
            .map(entry),
        Req::DeleteListEntries(r) => reg
            .delete_list_entries(&caller, &r.conversation_ids, r.clear_history)
            .await
            .map(ok),
        Req::DeleteConversation(r) => reg
            .delete_conversation(&caller, &r.conversation_id, r.purge_messages)
            .await
            .map(ok),
        Req::QueryPresence(r) => {
            reg.online_members(&caller, &r.conversation_id)
                .and_then(|online| {
                    let profiles = reg.profiles(&online)?;
                    Ok(Rep::Presence(pb::PresenceReply { online, profiles }))
                })
        }
        Req::BlockUser(r) => reg.block_user(&caller, &r.user_id).await.map(ok),
        Req::UnblockUser(r) => reg.unblock_user(&caller, &r.user_id).await.map(ok),
        Req::ListBlockedUsers(r) => reg.list_blocked_users(&caller, &r.cursor, r.limit).map(
            |(users, next_cursor, has_more)| {
                Rep::BlockedUserList(pb::BlockedUserList {
                    users,
                    next_cursor,
                    has_more,
                })
            },
        ),
        Req::SetProfile(r) => {
            let update = ProfileUpdate {
                display_name: r.display_name,
                avatar_url: r.avatar_url,
                set_fields: r.set_fields,
                remove_fields: r.remove_fields,
            };
            let user = caller.user.clone();
            reg.set_profile(&caller, &user, update)
                .await
                .map(Rep::Profile)
        }
        Req::GetProfiles(r) => reg
            .profiles(&r.user_ids)
            .map(|profiles| Rep::ProfileList(pb::ProfileList { profiles })),
        Req::Login(_) => Err(Error::AlreadyLoggedIn),
        // Session-level requests, answered by the session itself.
        Req::Logout(_)
        | Req::Ping(_)
        | Req::RefreshToken(_)
        | Req::SubscribePresence(_)
        | Req::UnsubscribePresence(_)
        | Req::SetWill(_)
        | Req::ClearWill(_) => Err(Error::Internal),
    };
    let answer = match result {
        Ok(body) => reply(id, body),
        Err(e) => {
            if matches!(e, Error::Internal) {
                tracing::error!(request_id = id, user = %caller.user, "request failed internally");
            }
            error_reply(id, &e)
        }
    };
    app.stats.traffic.native(kind, &answer);
    answer
}

/// What a request costs under the rate limits (`None`: not charged: a login, charged before
/// the session exists, and logout).
pub fn work_of(body: &Req) -> Option<Work> {
    Some(match body {
        Req::Login(_) | Req::Logout(_) => return None,
        Req::Ping(_) | Req::RefreshToken(_) => Work::Ping,
        Req::SendMessage(_) | Req::RecallMessage(_) | Req::EditMessage(_) => Work::Send,
        Req::ListConversations(_) => Work::List,
        Req::SyncMessages(_)
        | Req::FetchHistory(_)
        | Req::ListMembers(_)
        | Req::ListMutedMembers(_)
        | Req::ListBlockedMembers(_)
        | Req::ListBlockedUsers(_)
        | Req::GetProfiles(_)
        | Req::GetListEntry(_)
        | Req::QueryPresence(_) => Work::Page,
        Req::CreateConversation(_)
        | Req::AddMembers(_)
        | Req::RemoveMembers(_)
        | Req::LeaveConversation(_)
        | Req::JoinConversation(_)
        | Req::UpdateConversation(_)
        | Req::DeleteListEntries(_)
        | Req::DeleteConversation(_)
        | Req::DeleteMessages(_)
        | Req::SetMemberRole(_)
        | Req::TransferOwnership(_)
        | Req::MuteMembers(_)
        | Req::UnmuteMembers(_)
        | Req::SetMuteAll(_)
        | Req::BlockMembers(_)
        | Req::UnblockMembers(_)
        | Req::BlockUser(_)
        | Req::UnblockUser(_)
        | Req::SetProfile(_) => Work::Change,
        Req::GetConversation(_)
        | Req::SetMuted(_)
        | Req::CountMembers(_)
        | Req::MarkRead(_)
        | Req::AckDelivered(_)
        | Req::SubscribePresence(_)
        | Req::UnsubscribePresence(_)
        | Req::SetWill(_)
        | Req::ClearWill(_)
        | Req::SetEntryExt(_)
        | Req::PinConversation(_) => Work::Light,
    })
}

/// The reply for a failed request.
pub fn error_reply(id: u64, e: &Error) -> ServerFrame {
    reply(
        id,
        Rep::Error(pb::Error {
            code: e.code() as i32,
            message: e.to_string(),
            retry_after_ms: match e {
                Error::RateLimited { retry_after_ms } => *retry_after_ms,
                _ => 0,
            },
        }),
    )
}

fn conversation(c: pb::Conversation) -> Rep {
    Rep::Conversation(pb::ConversationReply {
        conversation: Some(c),
    })
}

fn ok(_: ()) -> Rep {
    Rep::Ok(pb::Ok {})
}

fn page(messages: Vec<pb::Message>, has_more: bool, next_cursor: String) -> Rep {
    Rep::MessagePage(pb::MessagePage {
        messages,
        has_more,
        next_cursor,
    })
}

fn message(m: pb::Message) -> Rep {
    Rep::MessageReply(pb::MessageReply { message: Some(m) })
}

fn entry(e: pb::ListEntry) -> Rep {
    Rep::ListEntry(pb::ListEntryReply { entry: Some(e) })
}
