//! The agent registry: browse and search for everyone signed in; create, update and delete for
//! operators (the `X-Operator-Key` header or a token with the `operator` role); heartbeats from
//! operators or the agent itself (a token whose subject is the agent id). An agent is online
//! while its last heartbeat is younger than `AGENT_OFFLINE_AFTER_SECS`.

use messaging::model::{Agent, AgentQuery};
use messaging::{Error, Result};
use mongodb::bson::DateTime;

use crate::Api;
use crate::accounts::{valid_name, valid_url};
use crate::conversations::page_size;
use crate::views::{
    AgentListQuery, AgentPage, AgentStatusFilter, AgentView, CreateAgentRequest, ErrorBody,
    UpdateAgentRequest, given,
};
use axum::extract::State;
use messaging::http::{Caller, Json, Path, Query, Reply};

/// Ids the system uses for itself.
const RESERVED_IDS: &[&str] = &["system", "me", "operator"];

fn online_since_ms(api: &Api) -> i64 {
    messaging::clock::now_ms() - api.ctx.settings.agent_offline_after.as_millis() as i64
}

fn valid_agent_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if !ok {
        return Err(Error::invalid(
            "agent_id must be 1 to 64 of a-z, 0-9, `_`, `-`, starting with a letter or digit",
        ));
    }
    // A well-formed id the system uses for itself is taken, like another agent's.
    if RESERVED_IDS.contains(&id) || id.starts_with("deleted-user") {
        return Err(Error::client(
            messaging::ErrorCode::Conflict,
            format!("agent id {id} is reserved"),
        ));
    }
    Ok(())
}

fn valid_list(items: Vec<String>, what: &str) -> Result<Vec<String>> {
    let items: Vec<String> = items
        .into_iter()
        .map(|i| i.trim().to_string())
        .filter(|i| !i.is_empty())
        .collect();
    if items.len() > 50 || items.iter().any(|i| i.chars().count() > 200) {
        return Err(Error::invalid(format!(
            "{what} takes at most 50 entries of at most 200 characters"
        )));
    }
    Ok(items)
}

fn valid_description(d: &str) -> Result<String> {
    if d.chars().count() > 2000 {
        return Err(Error::invalid(
            "description must be at most 2000 characters",
        ));
    }
    Ok(d.trim().to_string())
}

async fn existing(api: &Api, agent_id: &str) -> Result<Agent> {
    api.ctx
        .store
        .agent(agent_id)
        .await?
        .ok_or_else(|| Error::not_found(format!("agent {agent_id} does not exist")))
}

/// Browse and search the registry.
#[utoipa::path(
    operation_id = "listAgents",
    get, path = "/v1/agents", tag = "agents", security(("bearer" = []), ("operator_key" = [])),
    params(AgentListQuery),
    responses(
        (status = 200, description = "A page of agents by id", body = AgentPage),
        (status = 400, description = "Bad filter or limit", body = ErrorBody),
        (status = 401, description = "No or bad credentials", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(ref api): State<Api>,
    caller: Caller,
    Query(query): Query<AgentListQuery>,
) -> Result<Reply> {
    if !caller.is_operator() {
        caller.user()?;
    }
    let limit = page_size(query.limit, (20, 100))?;
    let since = online_since_ms(api);
    let online_since = match query.status {
        None | Some(AgentStatusFilter::Any) => None,
        Some(AgentStatusFilter::Online) => Some(DateTime::from_millis(since)),
    };
    let mut agents = api
        .ctx
        .store
        .search_agents(&AgentQuery {
            text: given(&query.q).map(|q| q.trim().to_string()),
            capability: given(&query.capability).map(str::to_string),
            category: given(&query.category).map(str::to_string),
            online_since,
            after: given(&query.cursor).map(str::to_string),
            limit: limit + 1,
        })
        .await?;
    let more = agents.len() > limit;
    agents.truncate(limit);
    let operator = caller.is_operator();
    Reply::ok(&AgentPage {
        next_cursor: more
            .then(|| agents.last().map(|a| a.agent_id.clone()))
            .flatten(),
        agents: agents
            .iter()
            .map(|a| AgentView::of(a, since, operator))
            .collect(),
    })
}

/// One agent: description, capabilities, examples, status.
#[utoipa::path(
    operation_id = "getAgent",
    get, path = "/v1/agents/{agent_id}", tag = "agents", security(("bearer" = []), ("operator_key" = [])),
    params(("agent_id" = String, Path, description = "The agent")),
    responses(
        (status = 200, description = "The agent", body = AgentView),
        (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
    )
)]
pub(crate) async fn get(
    State(ref api): State<Api>,
    caller: Caller,
    Path(agent_id): Path<String>,
) -> Result<Reply> {
    if !caller.is_operator() {
        caller.user()?;
    }
    let agent = existing(api, agent_id.as_str()).await?;
    Reply::ok(&AgentView::of(
        &agent,
        online_since_ms(api),
        caller.is_operator(),
    ))
}

/// Register an agent (operators only).
#[utoipa::path(
    operation_id = "createAgent",
    post, path = "/v1/agents", tag = "agents", security(("operator_key" = []), ("bearer" = [])),
    request_body = CreateAgentRequest,
    responses(
        (status = 201, description = "The agent", body = AgentView),
        (status = 400, description = "Invalid fields", body = ErrorBody),
        (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 403, description = "Not an operator", body = ErrorBody),
        (status = 409, description = "The id is taken", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    State(ref api): State<Api>,
    caller: Caller,
    Json(request): Json<CreateAgentRequest>,
) -> Result<Reply> {
    caller.operator()?;
    valid_agent_id(&request.agent_id)?;
    let agent = Agent {
        agent_id: request.agent_id,
        name: valid_name(&request.name, "name")?,
        description: valid_description(&request.description)?,
        capabilities: valid_list(request.capabilities, "capabilities")?,
        categories: valid_list(request.categories, "categories")?,
        examples: valid_list(request.examples, "examples")?,
        avatar_url: request
            .avatar_url
            .as_deref()
            .map(|u| valid_url(u, "avatar_url"))
            .transpose()?,
        endpoint: request
            .endpoint
            .as_deref()
            .map(|u| valid_url(u, "endpoint"))
            .transpose()?,
        last_heartbeat_at: None,
        created_at: DateTime::now(),
    };
    api.ctx.store.insert_agent(&agent).await?;
    Reply::json(201, &AgentView::of(&agent, online_since_ms(api), true))
}

/// Change an agent (operators only).
#[utoipa::path(
    operation_id = "updateAgent",
    patch, path = "/v1/agents/{agent_id}", tag = "agents", security(("operator_key" = []), ("bearer" = [])),
    params(("agent_id" = String, Path, description = "The agent")),
    request_body = UpdateAgentRequest,
    responses(
        (status = 200, description = "The agent as updated", body = AgentView),
        (status = 400, description = "Invalid fields", body = ErrorBody),
        (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 403, description = "Not an operator", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
    )
)]
pub(crate) async fn update(
    State(ref api): State<Api>,
    caller: Caller,
    Path(agent_id): Path<String>,
    Json(request): Json<UpdateAgentRequest>,
) -> Result<Reply> {
    caller.operator()?;
    let mut agent = existing(api, agent_id.as_str()).await?;
    if let Some(name) = &request.name {
        agent.name = valid_name(name, "name")?;
    }
    if let Some(d) = &request.description {
        agent.description = valid_description(d)?;
    }
    if let Some(c) = request.capabilities {
        agent.capabilities = valid_list(c, "capabilities")?;
    }
    if let Some(c) = request.categories {
        agent.categories = valid_list(c, "categories")?;
    }
    if let Some(e) = request.examples {
        agent.examples = valid_list(e, "examples")?;
    }
    if let Some(a) = &request.avatar_url {
        agent.avatar_url = a
            .as_deref()
            .map(|u| valid_url(u, "avatar_url"))
            .transpose()?;
    }
    if let Some(e) = &request.endpoint {
        agent.endpoint = e.as_deref().map(|u| valid_url(u, "endpoint")).transpose()?;
    }
    api.ctx.store.upsert_agent(&agent).await?;
    Reply::ok(&AgentView::of(&agent, online_since_ms(api), true))
}

/// Remove an agent from the registry (operators only). Its conversations stay; messages to it
/// are no longer routed to a registered endpoint.
#[utoipa::path(
    operation_id = "deleteAgent",
    delete, path = "/v1/agents/{agent_id}", tag = "agents", security(("operator_key" = []), ("bearer" = [])),
    params(("agent_id" = String, Path, description = "The agent")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 403, description = "Not an operator", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
    )
)]
pub(crate) async fn delete(
    State(ref api): State<Api>,
    caller: Caller,
    Path(agent_id): Path<String>,
) -> Result<Reply> {
    caller.operator()?;
    let agent_id = agent_id.as_str();
    if !api.ctx.store.delete_agent(agent_id).await? {
        return Err(Error::not_found(format!("agent {agent_id} does not exist")));
    }
    Reply::no_content()
}

/// Record an agent's heartbeat (operators, or the agent with a token for its own id).
#[utoipa::path(
    operation_id = "agentHeartbeat",
    post, path = "/v1/agents/{agent_id}/heartbeat", tag = "agents", security(("operator_key" = []), ("bearer" = [])),
    params(("agent_id" = String, Path, description = "The agent")),
    responses(
        (status = 204, description = "The agent is online"),
        (status = 401, description = "No or bad credentials", body = ErrorBody),
        (status = 403, description = "Neither an operator nor the agent", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
    )
)]
pub(crate) async fn heartbeat(
    State(ref api): State<Api>,
    caller: Caller,
    Path(agent_id): Path<String>,
) -> Result<Reply> {
    let agent_id = agent_id.as_str();
    if !caller.is_operator() && caller.user()?.sub != agent_id {
        return Err(Error::forbidden(
            "only operators and the agent itself send its heartbeats",
        ));
    }
    existing(api, agent_id).await?;
    api.ctx.store.touch_agent(agent_id, DateTime::now()).await?;
    Reply::no_content()
}
