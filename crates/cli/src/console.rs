//! The console API, `sd serve`: the node's deployments and pools, live, and
//! their three live settings (memory, liveness, save) to change, over HTTP
//! with an OpenAPI document (`/api/openapi.json`) and server-sent events
//! (`/api/events`).
//!
//! Run by root. Who asks is the owner of a per-user token,
//! `STATE_DIR/console/tokens/UID` (mode 0600, that user's): made for every
//! user who has a deployment here, and for root; `sd serve --token` prints
//! the URL with one's own. The token comes as `Authorization: Bearer`, or
//! as `?token=` on the first load, which sets an HttpOnly SameSite=Strict
//! cookie (a page of another site cannot send it: no CSRF). A user sees and
//! changes only their own deployments (the journal's uid), root all. It
//! binds to 127.0.0.1 unless told otherwise. Changes go through
//! [`crate::settings::apply`], as `sd set`'s do.
//!
//! The same API is served on a Unix socket, `STATE_DIR/console/console.sock`
//! (mode 0666), where the caller is the peer's uid as the kernel gives it
//! (`SO_PEERCRED`, taken at `connect()`): no token there. A user's `sd set`
//! goes through it ([`set_via_socket`]).
//!
//! `/` is the web console: one page (HTML, CSS and JS in `console.html`,
//! embedded in the binary) that shows the caller's pools and domains live
//! from `/api/events` and changes them with PATCH.

use crate::pool;
use crate::settings::{self, Applied, Changes, SettingsError};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use sd_site::{Blame, Fault, SiteConfig};
use sd_vmm::{deployment, status};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use utoipa::{OpenApi, ToSchema};

/// Where `sd serve` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8217";
/// Largest request body taken (a settings change is a few dozen bytes).
const MAX_BODY: usize = 16 * 1024;
/// Largest answer [`set_via_socket`] reads.
const MAX_ANSWER: u64 = 1024 * 1024;
/// The web console's page.
const PAGE: &str = include_str!("console.html");

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(
        "cannot listen on {addr}: {source} (another `sd serve`? give --listen 127.0.0.1:PORT)"
    )]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("the console's token of uid {uid} ({path}): {source}")]
    Token {
        uid: u32,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no console token for uid {uid} yet ({path}): `sd serve` makes one for every user with a deployment here; is it running?")]
    NoToken { uid: u32, path: PathBuf },
    #[error("{0}")]
    Runtime(std::io::Error),
    #[error("the console's socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where `sd serve` serves the API for local users, who they are from the kernel.
pub fn socket_path(site: &SiteConfig) -> PathBuf {
    site.state_dir.join("console/console.sock")
}

fn tokens_dir(site: &SiteConfig) -> PathBuf {
    site.state_dir.join("console/tokens")
}

fn token_path(site: &SiteConfig, uid: u32) -> PathBuf {
    tokens_dir(site).join(uid.to_string())
}

/// The token of `uid`, made if it has none (root only: it is chowned).
pub fn ensure_token(site: &SiteConfig, uid: u32) -> Result<String, ConsoleError> {
    let path = token_path(site, uid);
    let err = |source| ConsoleError::Token {
        uid,
        path: path.clone(),
        source,
    };
    if let Ok(t) = std::fs::read_to_string(&path) {
        return Ok(t.trim().to_string());
    }
    let dir = tokens_dir(site);
    std::fs::create_dir_all(&dir).map_err(err)?;
    // Others may reach their own file by name, and list nothing.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).map_err(err)?;
    if let Some(parent) = dir.parent() {
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711)).map_err(err)?;
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(err)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(token.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::os::unix::fs::chown(&tmp, Some(uid), None).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(token)
}

/// One's own token, as the URL to open (`sd serve --token`).
pub fn token_url(site: &SiteConfig, listen: &str, uid: u32) -> Result<String, ConsoleError> {
    let path = token_path(site, uid);
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(format!("http://{listen}/?token={}", t.trim())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ConsoleError::NoToken { uid, path })
        }
        Err(source) => Err(ConsoleError::Token { uid, path, source }),
    }
}

/// Makes a token for every user with a deployment here (and root).
fn tokens_for_owners(site: &SiteConfig) {
    let mut uids = vec![0];
    for id in status::list(site).unwrap_or_default() {
        if let Ok(Some(st)) = status::of(site, &id) {
            uids.extend(st.uid);
        }
    }
    uids.sort();
    uids.dedup();
    for uid in uids {
        if let Err(e) = ensure_token(site, uid) {
            tracing::warn!("{e}");
        }
    }
}

/// Whose `token` it is.
fn token_owner(site: &SiteConfig, token: &str) -> Option<u32> {
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let entries = std::fs::read_dir(tokens_dir(site)).ok()?;
    entries.flatten().find_map(|e| {
        let uid: u32 = e.file_name().to_str()?.parse().ok()?;
        let known = std::fs::read_to_string(e.path()).ok()?;
        let known = known.trim().as_bytes();
        // Constant time in the token's bytes.
        let same = known.len() == token.len()
            && known
                .iter()
                .zip(token.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        same.then_some(uid)
    })
}

/// The caller, as authenticated.
#[derive(Debug, Clone, Copy)]
struct Caller(u32);

#[derive(Clone)]
struct Ctx {
    site: Arc<SiteConfig>,
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("sd_token=").map(str::to_string))
}

async fn authenticate(
    State(ctx): State<Ctx>,
    Query(q): Query<HashMap<String, String>>,
    mut req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let from_query = q.get("token").cloned();
    let token = bearer
        .or_else(|| cookie_token(headers))
        .or(from_query.clone());
    let Some(uid) = token.as_deref().and_then(|t| token_owner(&ctx.site, t)) else {
        return problem(
            StatusCode::UNAUTHORIZED,
            "no valid console token: open the URL `sd serve --token` prints, or send Authorization: Bearer TOKEN",
            Fault::User,
        );
    };
    req.extensions_mut().insert(Caller(uid));
    let mut response = next.run(req).await;
    if let (Some(t), Some(_)) = (token, from_query) {
        if let Some(v) = token_cookie(&t) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

fn token_cookie(token: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "sd_token={token}; HttpOnly; SameSite=Strict; Path=/"
    ))
    .ok()
}

/// The uid of a Unix socket's peer, from `SO_PEERCRED` (None if the kernel
/// would not say).
#[derive(Debug, Clone, Copy)]
struct PeerUid(Option<u32>);

/// On the Unix socket, the caller is who connected.
async fn from_peer(
    Extension(PeerUid(uid)): Extension<PeerUid>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(uid) = uid else {
        return problem(
            StatusCode::UNAUTHORIZED,
            "the kernel did not say who connected (SO_PEERCRED)",
            Fault::Site,
        );
    };
    req.extensions_mut().insert(Caller(uid));
    next.run(req).await
}

/// `/`: the web console. With `?token=`, a valid token becomes the cookie
/// and the browser is sent to `/`, so the token leaves the address bar.
async fn page(State(ctx): State<Ctx>, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Some(t) = q.get("token") {
        let t = t.clone();
        let site = ctx.site.clone();
        let known = blocking(move || token_owner(&site, &t).is_some()).await;
        return match (known, token_cookie(&q["token"])) {
            (true, Some(cookie)) => (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, HeaderValue::from_static("/")),
                    (header::SET_COOKIE, cookie),
                ],
            )
                .into_response(),
            _ => problem(
                StatusCode::UNAUTHORIZED,
                "not a valid console token: `sd serve --token` prints your URL",
                Fault::User,
            ),
        };
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// An error as the API gives it.
#[derive(Serialize, ToSchema)]
struct Problem {
    error: String,
    /// Whose to fix: `user` or `site`.
    fault: String,
}

fn problem(status: StatusCode, error: &str, fault: Fault) -> Response {
    let fault = match fault {
        Fault::User => "user",
        Fault::Site => "site",
    };
    (
        status,
        Json(Problem {
            error: error.to_string(),
            fault: fault.into(),
        }),
    )
        .into_response()
}

/// A JSON request body whose refusal (not JSON, not the schema, no
/// `Content-Type: application/json`) is a [`Problem`] like every other
/// error, with axum's status for it (400, 422, 415).
struct JsonBody<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(refused) => Err(problem(refused.status(), &refused.body_text(), Fault::User)),
        }
    }
}

fn settings_problem(e: &SettingsError) -> Response {
    let status = if e.is_forbidden() {
        StatusCode::FORBIDDEN
    } else if e.is_not_found() {
        StatusCode::NOT_FOUND
    } else if e.fault() == Fault::User {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::BAD_GATEWAY
    };
    problem(status, &e.to_string(), e.fault())
}

/// A deployment as the console shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
struct DeploymentView {
    id: String,
    uid: Option<u32>,
    /// `running`, `stopped` or `creating`.
    state: String,
    backend: Option<String>,
    vcpus: Option<u32>,
    memory_boot_mib: Option<u64>,
    /// The balloon target last set (None: never changed, i.e. the boot memory).
    memory_target_mib: Option<u64>,
    /// What the guest has now (query-balloon), None if not reported.
    memory_actual_mib: Option<u64>,
    uptime_secs: u64,
    /// The pool it is a member of.
    pool: Option<String>,
    liveness_secs: Option<u64>,
    liveness_factor: Option<u32>,
    last_beat_unix_ms: Option<u64>,
    missed_beats: Option<u32>,
    save: bool,
    save_as: Option<String>,
    /// `network=address` of each interface (address: assigned by the host side when absent).
    addresses: Vec<String>,
}

/// A pool and its members' ids.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
struct PoolView {
    name: String,
    kind: String,
    started_unix_ms: u64,
    members: Vec<String>,
    monitor_pid: Option<u32>,
}

fn view(site: &SiteConfig, id: &str, st: &status::DeploymentStatus) -> DeploymentView {
    let env = st.environment.as_ref();
    let domain = deployment::running_domain(site, st.backend.as_deref(), id)
        .ok()
        .flatten();
    let journal = sd_vmm::journal::Journal::open(&site.state_dir, id)
        .ok()
        .flatten();
    let details = journal
        .as_ref()
        .map(|j| j.details().clone())
        .unwrap_or_default();
    let pool = pool::list(site).into_iter().find(|p| {
        pool::load(site, p)
            .ok()
            .flatten()
            .is_some_and(|r| r.members.iter().any(|m| m.id == id))
    });
    let beat = pool
        .as_deref()
        .and_then(|p| pool::read_liveness(site, p))
        .and_then(|r| r.members.into_iter().find(|b| b.id == id));
    let save = env.map(|e| settings::current_save(site, id, e));
    DeploymentView {
        id: id.to_string(),
        uid: st.uid,
        state: match (&domain, env) {
            (Some(_), _) => "running",
            (None, None) => "creating",
            (None, Some(_)) => "stopped",
        }
        .into(),
        backend: st.backend.clone(),
        vcpus: env.map(|e| e.vcpus),
        memory_boot_mib: env.map(|e| e.memory_mib),
        memory_target_mib: details.memory_target_mib,
        memory_actual_mib: domain.and_then(|d| d.memory_actual_mib().ok()),
        uptime_secs: st.uptime_secs(),
        pool,
        liveness_secs: beat.as_ref().map(|b| b.delay_secs),
        liveness_factor: beat.as_ref().map(|b| b.factor),
        last_beat_unix_ms: beat.as_ref().and_then(|b| b.last_beat_unix_ms),
        missed_beats: beat.as_ref().map(|b| b.missed),
        save: save.as_ref().is_some_and(|s| s.save_image),
        save_as: save.and_then(|s| s.save_as),
        addresses: env
            .map(|e| {
                e.networks
                    .iter()
                    .map(|n| match n.ip {
                        Some(ip) => format!("{}={ip}", n.network),
                        None => n.network.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn visible(site: &SiteConfig, caller: u32) -> Vec<DeploymentView> {
    status::list(site)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|id| {
            let st = crate::exec::owned(site, &id, caller).ok()?;
            Some(view(site, &id, &st))
        })
        .collect()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a console worker panicked")
}

#[utoipa::path(get, path = "/api/deployments", responses(
    (status = 200, body = Vec<DeploymentView>, description = "The caller's deployments (root: all)"),
    (status = 401, body = Problem)))]
async fn list_deployments(
    State(ctx): State<Ctx>,
    Extension(Caller(uid)): Extension<Caller>,
) -> Response {
    blocking(move || {
        tokens_for_owners(&ctx.site);
        Json(visible(&ctx.site, uid)).into_response()
    })
    .await
}

#[utoipa::path(get, path = "/api/deployments/{id}",
    params(("id" = String, Path, description = "A deployment id, as `sd status` lists")),
    responses((status = 200, body = DeploymentView), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn get_deployment(
    State(ctx): State<Ctx>,
    Extension(Caller(uid)): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    blocking(move || match crate::exec::owned(&ctx.site, &id, uid) {
        Ok(st) => Json(view(&ctx.site, &id, &st)).into_response(),
        Err(e) => settings_problem(&SettingsError::Target(e)),
    })
    .await
}

#[utoipa::path(patch, path = "/api/deployments/{id}", request_body = Changes,
    params(("id" = String, Path, description = "A deployment id")),
    responses((status = 200, body = Vec<Applied>, description = "What changed"),
        (status = 400, body = Problem, description = "The body is not JSON"),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem),
        (status = 415, body = Problem, description = "No `Content-Type: application/json`"),
        (status = 422, body = Problem, description = "Not a valid change, or one the site's limits refuse"),
        (status = 502, body = Problem, description = "The hypervisor failed (the site's fault)")))]
async fn patch_deployment(
    State(ctx): State<Ctx>,
    Extension(Caller(uid)): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
    JsonBody(changes): JsonBody<Changes>,
) -> Response {
    change(ctx, uid, id, changes).await
}

async fn change(ctx: Ctx, uid: u32, target: String, changes: Changes) -> Response {
    blocking(
        move || match settings::apply(&ctx.site, &target, uid, &changes) {
            Ok(applied) => Json(applied).into_response(),
            Err(e) => settings_problem(&e),
        },
    )
    .await
}

#[utoipa::path(get, path = "/api/pools", responses(
    (status = 200, body = Vec<PoolView>, description = "Pools with a member of the caller's"),
    (status = 401, body = Problem)))]
async fn list_pools(State(ctx): State<Ctx>, Extension(Caller(uid)): Extension<Caller>) -> Response {
    blocking(move || {
        let mine: Vec<String> = visible(&ctx.site, uid).into_iter().map(|d| d.id).collect();
        let pools: Vec<PoolView> = pool::list(&ctx.site)
            .into_iter()
            .filter_map(|p| pool::load(&ctx.site, &p).ok().flatten())
            .filter(|r| r.members.iter().any(|m| mine.contains(&m.id)))
            .map(|r| PoolView {
                name: r.name,
                kind: r.kind,
                started_unix_ms: r.started_unix_ms,
                members: r.members.into_iter().map(|m| m.id).collect(),
                monitor_pid: r.monitor_pid,
            })
            .collect();
        Json(pools).into_response()
    })
    .await
}

#[utoipa::path(patch, path = "/api/pools/{name}", request_body = Changes,
    params(("name" = String, Path, description = "A pool: every member not down")),
    responses((status = 200, body = Vec<Applied>), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 415, body = Problem),
        (status = 422, body = Problem), (status = 502, body = Problem)))]
async fn patch_pool(
    State(ctx): State<Ctx>,
    Extension(Caller(uid)): Extension<Caller>,
    UrlPath(name): UrlPath<String>,
    JsonBody(changes): JsonBody<Changes>,
) -> Response {
    if name.contains('/') || !pool::valid_name(&name) {
        return problem(
            StatusCode::NOT_FOUND,
            &format!("no pool {name:?}"),
            Fault::User,
        );
    }
    change(ctx, uid, name, changes).await
}

#[utoipa::path(get, path = "/api/events", responses(
    (status = 200, content_type = "text/event-stream",
     description = "`deployments` events: the caller's deployments (as GET /api/deployments) whenever they change, checked every second"),
    (status = 401, body = Problem)))]
async fn events(
    State(ctx): State<Ctx>,
    Extension(Caller(uid)): Extension<Caller>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let stream = futures_util::stream::unfold(None::<String>, move |last| {
        let ctx = ctx.clone();
        async move {
            loop {
                if last.is_some() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let site = ctx.site.clone();
                let now = blocking(move || {
                    serde_json::to_string(&visible(&site, uid)).unwrap_or_default()
                })
                .await;
                if last.as_deref() != Some(now.as_str()) {
                    let event = Event::default().event("deployments").data(now.clone());
                    return Some((Ok(event), Some(now)));
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "SmartDomains console API", description = "Deployments and pools of this node, and their live settings."),
    paths(list_deployments, get_deployment, patch_deployment, list_pools, patch_pool, events),
    components(schemas(DeploymentView, PoolView, Changes, Applied, Problem)),
    modifiers(&BearerAuth),
    security(("token" = []))
)]
struct ApiDoc;

struct BearerAuth;
impl utoipa::Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document, as served at `/api/openapi.json`.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
}

/// The API's routes, before the caller is known.
fn api_routes() -> Router<Ctx> {
    Router::new()
        .route("/api/deployments", get(list_deployments))
        .route(
            "/api/deployments/{id}",
            get(get_deployment).patch(patch_deployment),
        )
        .route("/api/pools", get(list_pools))
        .route("/api/pools/{name}", axum::routing::patch(patch_pool))
        .route("/api/events", get(events))
}

fn with_doc(api: Router<Ctx>, ctx: Ctx) -> Router {
    Router::new()
        .route(
            "/api/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], openapi_json()) }),
        )
        .merge(api)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(ctx)
}

/// The routes served over HTTP for `site`: the page, and the API for the
/// owner of a token.
pub fn router(site: SiteConfig) -> Router {
    let ctx = Ctx {
        site: Arc::new(site),
    };
    let api = api_routes()
        .layer(middleware::from_fn_with_state(ctx.clone(), authenticate))
        .route("/", get(page));
    with_doc(api, ctx)
}

/// The routes served on the Unix socket: the API for the peer.
fn socket_router(site: Arc<SiteConfig>) -> Router {
    let ctx = Ctx { site };
    with_doc(api_routes().layer(middleware::from_fn(from_peer)), ctx)
}

/// Binds the console's socket: anyone may connect (mode 0666); who they
/// are is the kernel's word.
fn bind_socket(site: &SiteConfig) -> Result<tokio::net::UnixListener, ConsoleError> {
    use std::os::unix::fs::FileTypeExt;
    let path = socket_path(site);
    let err = |source| ConsoleError::Socket {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(err)?;
    }
    // A socket left by an `sd serve` that was killed; anything else is not ours to remove.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another `sd serve` answers there",
            )));
        }
        std::fs::remove_file(&path).map_err(err)?;
    }
    let listener = tokio::net::UnixListener::bind(&path).map_err(err)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    Ok(listener)
}

/// `sd serve --listen ADDR`: serves until killed, over HTTP on ADDR and on
/// the Unix socket.
pub fn serve(site: SiteConfig, listen: &str) -> Result<(), ConsoleError> {
    tokens_for_owners(&site);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ConsoleError::Runtime)?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ConsoleError::Listen {
                addr: listen.to_string(),
                source,
            })?;
        let unix = bind_socket(&site)?;
        tracing::info!(
            "console on http://{listen}/ (API: /api/openapi.json) and {}",
            socket_path(&site).display()
        );
        let site = Arc::new(site);
        let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let http_app = router((*site).clone());
        let socket_app = socket_router(site.clone());
        // An accept that fails (a connection reset before it was taken, no
        // file descriptor left) is logged and tried again, as axum::serve does.
        let accept_failed = |e: std::io::Error| async move {
            tracing::warn!("console: accept: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let http = async {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        serve_connection(stream, http_app.clone(), &connections);
                    }
                    Err(e) => accept_failed(e).await,
                }
            }
        };
        let local = async {
            loop {
                match unix.accept().await {
                    Ok((stream, _)) => {
                        let peer = PeerUid(stream.peer_cred().ok().map(|c| c.uid()));
                        let app = socket_app.clone().layer(Extension(peer));
                        serve_connection(stream, app, &connections);
                    }
                    Err(e) => accept_failed(e).await,
                }
            }
        };
        tokio::join!(http, local);
        Ok(())
    })
}

/// How long a client has to send a request's headers: a slow or silent
/// client cannot hold a task of this root process for longer.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once, over HTTP and the socket together; one over
/// that is closed at once.
pub const MAX_CONNECTIONS: usize = 256;

/// Serves one connection over HTTP/1.1 on its own task, with what
/// `axum::serve` cannot be told: [`HEADER_READ_TIMEOUT`] and
/// [`MAX_CONNECTIONS`]. (A live event stream keeps its connection: the
/// timeout is for the headers of each request only.)
fn serve_connection<S>(stream: S, app: Router, connections: &Arc<tokio::sync::Semaphore>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = connections.clone().try_acquire_owned() else {
        tracing::warn!("console: {MAX_CONNECTIONS} connections already; one refused");
        return;
    };
    tokio::spawn(async move {
        let service = hyper_util::service::TowerToHyperService::new(app);
        let served = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
        if let Err(e) = served {
            tracing::debug!("console: connection ended: {e}");
        }
        drop(permit);
    });
}

/// Why [`set_via_socket`] did not change anything.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No `sd serve` answers on the socket.
    #[error("no console service answers on {path} ({source}): root runs `sd serve`")]
    NoService {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The API refused, in its words.
    #[error("{error}")]
    Refused {
        status: u16,
        error: String,
        fault: Fault,
    },
    #[error("the console's socket {path}: {message}")]
    Broken { path: PathBuf, message: String },
}

impl Blame for ClientError {
    fn fault(&self) -> Fault {
        match self {
            ClientError::Refused { fault, .. } => *fault,
            _ => Fault::Site,
        }
    }
}

/// A path segment, percent-encoded (`pool/member` is one segment).
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `sd set` for a user: the change asked of the root service over its Unix
/// socket, which knows the caller from the kernel.
pub fn set_via_socket(
    site: &SiteConfig,
    name: &str,
    changes: &Changes,
) -> Result<Vec<Applied>, ClientError> {
    use std::io::Read;
    let path = socket_path(site);
    let broken = |message: String| ClientError::Broken {
        path: path.clone(),
        message,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(|source| {
        ClientError::NoService {
            path: path.clone(),
            source,
        }
    })?;
    // The balloon may take its time (settings' BALLOON_WAIT), not forever.
    let limit = Some(Duration::from_secs(90));
    stream
        .set_read_timeout(limit)
        .and_then(|()| stream.set_write_timeout(limit))
        .map_err(|e| broken(e.to_string()))?;
    let body = serde_json::to_string(changes).expect("changes serialise");
    write!(
        stream,
        "PATCH /api/deployments/{} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        encode_segment(name),
        body.len()
    )
    .map_err(|e| broken(e.to_string()))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(|e| broken(e.to_string()))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| broken("no HTTP answer".into()))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| broken(format!("not an HTTP answer: {head:?}")))?;
    if status == 200 {
        return serde_json::from_str(body).map_err(|e| broken(format!("{e}: {body:?}")));
    }
    let (error, fault) = match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) if v["error"].is_string() => (
            v["error"].as_str().unwrap_or_default().to_string(),
            if v["fault"] == "site" {
                Fault::Site
            } else {
                Fault::User
            },
        ),
        // axum's own refusals (a body not of the schema) are plain text.
        _ => (
            format!("HTTP {status}: {}", body.trim()),
            if status >= 500 {
                Fault::Site
            } else {
                Fault::User
            },
        ),
    };
    Err(ClientError::Refused {
        status,
        error,
        fault,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_one_path_segment() {
        assert_eq!(encode_segment("farm/worker-1"), "farm%2Fworker-1");
        assert_eq!(encode_segment("a b?c"), "a%20b%3Fc");
    }

    #[test]
    fn the_page_is_whole_and_needs_nothing_from_elsewhere() {
        assert!(PAGE.starts_with("<!doctype html>"));
        assert!(PAGE.contains("/api/events") && PAGE.contains("PATCH"));
        // Nothing from another site: the only URL is SVG's namespace, a name.
        let rest = PAGE.replace("http://www.w3.org/2000/svg", "");
        assert!(!rest.contains("http://") && !rest.contains("https://") && !rest.contains("//cdn"));
    }
}
