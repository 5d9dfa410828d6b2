//! The API over real HTTP: a server on a free port, its own `redis-server` holding the fixed
//! captured Celery 5.7 keyspace, and the SQLite owner table of the engine's tests. Every request
//! goes through the whole stack (request id, authentication, body parsing, the engine).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use janitor_engine::{Janitor, ListOptions, ReadOptions, RunCtx, State};
use janitor_server::{token_digest_hex, Authenticator, ServeOptions, Server, DEFAULT_BODY_LIMIT};
use janitor_testkit::redis_server::{Snapshot, TestRedis};
use janitor_testkit::{keyspace, sqlite_owners};
use jsonwebtoken::{encode, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "cjt_admin-token-for-tests";
const VIEWER_TOKEN: &str = "cjt_viewer-token-for-tests";
const JWT_SECRET: &str = "a-jwt-secret-for-the-http-tests-0123456789";
const JWT_ENV: &str = "CJ_TEST_JWT_SECRET";

struct World {
    redis: TestRedis,
    addr: SocketAddr,
    /// The `[api] metrics_bind` listener's address, when configured.
    metrics_addr: Option<SocketAddr>,
    /// A second engine on the same Redis and database, to compare answers with.
    janitor: Janitor,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

fn config_text(redis: &TestRedis, db_url: &str, dir: &std::path::Path, api: &str) -> String {
    let section = format!("url = \"{}\"", redis.url());
    format!(
        r#"{}
[api]
{api}
trusted_proxies = ["127.0.0.1"]
[[api.tokens]]
name = "ops"
sha256 = "{}"
role = "admin"
[[api.tokens]]
name = "grafana"
sha256 = "{}"
role = "viewer"
[api.jwt]
algorithm = "HS256"
secret_env = "{JWT_ENV}"
admin_claim = "is_superuser=true"
viewer_claim = "realm_access.roles=viewer"
"#,
        sqlite_owners::config(&section, db_url, dir, ""),
        token_digest_hex(ADMIN_TOKEN),
        token_digest_hex(VIEWER_TOKEN),
    )
}

async fn world() -> World {
    world_with(None).await
}

/// A world whose server answers HTTPS with `tls` (certificate and key PEM files).
async fn world_with(tls: Option<(std::path::PathBuf, std::path::PathBuf)>) -> World {
    world_full(tls, "").await
}

/// A world whose config's `[api]` table also holds `api` (TOML lines).
async fn world_full(tls: Option<(std::path::PathBuf, std::path::PathBuf)>, api: &str) -> World {
    let redis = TestRedis::start().await;
    keyspace::load(&redis).await;
    let dir = tempfile::tempdir().unwrap();
    let db_url = sqlite_owners::create(dir.path()).await;
    let text = config_text(&redis, &db_url, dir.path(), api);
    let settings = || {
        janitor_config::resolve_text(&text, &janitor_config::Flags::default(), &|_| None).unwrap()
    };
    let get_env = |k: &str| (k == JWT_ENV).then(|| JWT_SECRET.to_owned());
    let auth = Authenticator::from_settings(&settings().api, &get_env).unwrap();
    let options = ServeOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        insecure_no_auth: false,
        tls,
        allow_plain_http: false,
        request_timeout: None,
        body_limit: DEFAULT_BODY_LIMIT,
    };
    let server = Server::bind(Janitor::connect(settings()).await.unwrap(), auth, &options)
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let metrics_addr = server.metrics_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        server
            .run(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    World {
        redis,
        addr,
        metrics_addr,
        janitor: Janitor::connect(settings()).await.unwrap(),
        client: reqwest::Client::new(),
        stop: Some(stop),
        server: Some(handle),
        _dir: dir,
    }
}

/// A peer address of its own for each request (the server trusts `X-Forwarded-For` from
/// 127.0.0.1), so the many refusals of a test never trip the brake on failures.
fn fresh_peer() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("198.18.{}.{}", (n >> 8) & 0xff, n & 0xff)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn jwt(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// The credentials of the matrix, with the status class each gets for a GET and a POST.
fn credentials() -> Vec<(&'static str, Option<String>, u16, u16)> {
    let exp = now() + 600;
    vec![
        ("no token", None, 401, 401),
        ("bad token", Some("cjt_not-a-token".into()), 401, 401),
        (
            "expired JWT",
            Some(jwt(
                json!({"sub": "alice", "is_superuser": true, "exp": now() - 3600}),
            )),
            401,
            401,
        ),
        (
            "JWT without admin claim",
            Some(jwt(
                json!({"sub": "bob", "is_superuser": false, "exp": exp}),
            )),
            403,
            403,
        ),
        ("viewer token", Some(VIEWER_TOKEN.into()), 200, 403),
        (
            "viewer JWT",
            Some(jwt(
                json!({"sub": "carol", "realm_access": {"roles": ["viewer"]}, "exp": exp}),
            )),
            200,
            403,
        ),
        ("admin token", Some(ADMIN_TOKEN.into()), 200, 200),
        (
            "admin JWT",
            Some(jwt(
                json!({"sub": "alice", "is_superuser": true, "exp": exp}),
            )),
            200,
            200,
        ),
    ]
}

impl World {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, String) {
        let mut req = self
            .client
            .request(method, self.url(path))
            .header("x-forwarded-for", fresh_peer());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        (status, headers, res.text().await.unwrap())
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (status, _, text) = self.call(method, path, Some(ADMIN_TOKEN), body).await;
        (status, serde_json::from_str(&text).unwrap())
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.server.take().unwrap().await.unwrap();
    }
}

fn error_code(text: &str) -> String {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let error = v["error"].as_object().unwrap_or_else(|| panic!("{text}"));
    assert!(error["message"].is_string(), "{text}");
    error["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_endpoint_answers_each_credential_as_its_role_allows() {
    let w = world().await;
    let endpoints: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::GET, "/api/v1/cache/status", None),
        (Method::GET, "/api/v1/cache/celery-tasks?limit=5", None),
        (Method::GET, "/api/v1/cache/runs", None),
        (Method::GET, "/api/v1/cache/archive?limit=5", None),
        (Method::GET, "/metrics", None),
        (
            Method::POST,
            "/api/v1/cache/queues/not-a-queue/purge",
            Some(json!({"confirm": "not-a-queue"})),
        ),
        (
            Method::POST,
            "/api/v1/cache/cleanup/orphaned-tasks",
            Some(json!({"dry_run": true})),
        ),
        (
            Method::POST,
            "/api/v1/cache/cleanup/full",
            Some(json!({"dry_run": true, "grace_seconds": 0})),
        ),
        (
            Method::POST,
            "/api/v1/cache/archive/restore",
            Some(json!({"run_id": "20200101T000000Z-00000000", "dry_run": true})),
        ),
    ];
    let before = Snapshot::take(&w.redis).await;
    for (who, token, get_status, post_status) in credentials() {
        for (method, path, body) in &endpoints {
            let expected = if *method == Method::GET {
                get_status
            } else {
                post_status
            };
            let (status, headers, text) = w
                .call(method.clone(), path, token.as_deref(), body.clone())
                .await;
            assert_eq!(status.as_u16(), expected, "{who}: {method} {path}: {text}");
            assert!(
                headers.contains_key("x-request-id"),
                "{who}: {method} {path}: no request id"
            );
            match expected {
                401 => {
                    assert_eq!(error_code(&text), "unauthorized", "{who} {path}");
                    assert_eq!(headers["www-authenticate"], "Bearer");
                }
                403 => assert_eq!(error_code(&text), "forbidden", "{who} {path}"),
                _ if *path == "/metrics" => {
                    assert!(text.starts_with('#'), "{who} {path}: {text}")
                }
                _ => {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    assert!(v.get("error").is_none(), "{who} {path}: {text}");
                    if path.contains("purge") {
                        assert!(headers.contains_key("x-run-id"), "{who} {path}");
                    }
                    if path.contains("cleanup") {
                        assert!(headers.contains_key("x-run-id"), "{who} {path}");
                        assert_eq!(v["dry_run"], true);
                    }
                }
            }
            for secret in [ADMIN_TOKEN, VIEWER_TOKEN, JWT_SECRET] {
                assert!(!text.contains(secret), "{who} {path}: {text}");
            }
        }
    }
    Snapshot::take(&w.redis)
        .await
        .assert_same_content(&before, "dry runs and reads changed Redis");
    w.stop().await;
}

#[tokio::test]
async fn the_status_body_is_the_engines_report_as_the_cli_prints_it() {
    let w = world().await;
    let (status, headers, text) = w
        .call(Method::GET, "/api/v1/cache/status", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(headers["content-type"], "application/json");
    let report = w
        .janitor
        .status(&ReadOptions::default(), &RunCtx::quiet())
        .await
        .unwrap();
    // What `status --json` prints for the engine's report: pretty JSON and a newline. Redis's
    // own figures (memory, clients) move between two reads; everything else is the same.
    let mut expected = serde_json::to_value(&report).unwrap();
    let mut got: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        text,
        format!("{}\n", serde_json::to_string_pretty(&got).unwrap())
    );
    for v in [&mut expected, &mut got] {
        v["redis"]["used_memory_bytes"] = Value::Null;
        v["redis"]["connected_clients"] = Value::Null;
    }
    assert_eq!(got, expected);
    assert!(got["tasks"]["orphaned"].as_u64().unwrap() > 0);
    w.stop().await;
}

#[tokio::test]
async fn tasks_come_in_pages_that_add_up_to_the_engines_listing() {
    let w = world().await;
    let all = w
        .janitor
        .list(
            &ListOptions {
                states: vec![State::Orphaned],
                ..Default::default()
            },
            &RunCtx::quiet(),
        )
        .await
        .unwrap()
        .rows;
    assert!(all.len() > 2);
    let mut seen = Vec::new();
    let mut path = "/api/v1/cache/celery-tasks?orphaned=true&limit=2".to_owned();
    loop {
        let (status, page) = w.admin(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!("/api/v1/cache/celery-tasks?orphaned=true&limit=2&cursor={cursor}")
            }
            None => break,
        }
    }
    assert_eq!(Value::Array(seen), serde_json::to_value(&all).unwrap());

    let (_, page) = w
        .admin(
            Method::GET,
            "/api/v1/cache/celery-tasks?state=live,unowned&location=queue",
            None,
        )
        .await;
    for item in page["items"].as_array().unwrap() {
        assert_eq!(item["location"], "queue");
        assert!(
            item["state"] == "live" || item["state"] == "unowned",
            "{item}"
        );
    }

    let (status, page) = w
        .admin(Method::GET, "/api/v1/cache/celery-tasks?queue=custom", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let items = page["items"].as_array().unwrap();
    assert!(!items.is_empty());
    for item in items {
        assert_eq!(item["queue"], "custom", "{item}");
        assert_ne!(item["location"], "result", "{item}");
    }

    for bad in [
        "?limit=0",
        "?limit=10001",
        "?limit=ten",
        "?cursor=nope",
        "?state=gone",
        "?location=moon",
        "?orphaned=true&state=live",
        "?no_such_param=1",
    ] {
        let (status, _, text) = w
            .call(
                Method::GET,
                &format!("/api/v1/cache/celery-tasks{bad}"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {text}");
        assert_eq!(error_code(&text), "bad_request", "{bad}");
    }
    w.stop().await;
}

#[tokio::test]
async fn two_cleanups_at_once_one_is_refused_with_the_holder_then_restore_undoes_the_run() {
    let w = world().await;
    let first = {
        let client = w.client.clone();
        let url = w.url("/api/v1/cache/cleanup/orphaned-tasks");
        tokio::spawn(async move {
            // The grace wait holds the run lock for two seconds.
            client
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"grace_seconds": 2}))
                .send()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let (status, headers, text) = w
        .call(
            Method::POST,
            "/api/v1/cache/cleanup/full",
            Some(ADMIN_TOKEN),
            Some(json!({"grace_seconds": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(error_code(&text), "busy");
    let busy: Value = serde_json::from_str(&text).unwrap();
    let holder = &busy["error"]["holder"];
    assert!(
        holder["run_id"].is_string() && holder["since"].is_string(),
        "{text}"
    );
    assert!(holder.get("token").is_none(), "{text}");

    let first = first.await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let run_id = first.headers()["x-run-id"].to_str().unwrap().to_owned();
    let report: Value = first.json().await.unwrap();
    assert_eq!(report["run_id"], run_id.as_str());
    assert_eq!(report["dry_run"], false);
    let removed = report["removed"]["queue"].as_u64().unwrap()
        + report["removed"]["unacked"].as_u64().unwrap()
        + report["removed"]["result"].as_u64().unwrap();
    assert!(removed > 0, "{report}");
    assert_eq!(holder["run_id"], run_id.as_str());

    let (status, runs) = w
        .admin(Method::GET, "/api/v1/cache/runs?limit=5", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let newest = &runs["items"][0];
    assert_eq!(newest["run_id"], run_id.as_str());
    assert_eq!(newest["outcome"], "completed");

    let (status, restored) = w
        .admin(
            Method::POST,
            "/api/v1/cache/archive/restore",
            Some(json!({"run_id": run_id})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{restored}");
    let total: u64 = restored["restored"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, removed, "{restored}");

    // Each mutating request left an audit line with its actor, request id, run and outcome.
    let audit = std::fs::read_to_string(w._dir.path().join("audit.jsonl")).unwrap();
    let requests: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["action"] == "api_request")
        .collect();
    let find = |endpoint: &str| {
        requests
            .iter()
            .find(|r| r["endpoint"] == endpoint)
            .unwrap_or_else(|| panic!("no audit line for {endpoint}: {audit}"))
            .clone()
    };
    let cleanup = find("POST /api/v1/cache/cleanup/orphaned-tasks");
    assert_eq!(cleanup["actor"], "ops");
    assert_eq!(cleanup["credential"], "token");
    assert_eq!(cleanup["run_id"], run_id.as_str());
    assert_eq!(cleanup["outcome"], "completed");
    assert_eq!(cleanup["changed"], removed);
    assert!(cleanup["request_id"].as_str().unwrap().len() >= 32);
    assert!(cleanup["ts"].is_string());
    let refused = find("POST /api/v1/cache/cleanup/full");
    assert_eq!(
        (refused["status"].as_u64(), refused["outcome"].as_str()),
        (Some(409), Some("busy"))
    );
    assert_eq!(
        refused["request_id"],
        headers["x-request-id"].to_str().unwrap()
    );
    let undo = find("POST /api/v1/cache/archive/restore");
    assert_eq!(
        (undo["run_id"].as_str(), undo["changed"].as_u64()),
        (Some(run_id.as_str()), Some(removed))
    );
    assert!(!audit.contains(ADMIN_TOKEN));
    // The run's own lines name the caller too.
    let removals: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["action"] == "remove" && v["run_id"] == run_id.as_str())
        .collect();
    assert_eq!(removals.len() as u64, removed);
    assert!(removals.iter().all(|r| r["actor"] == "ops"), "{audit}");
    w.stop().await;
}

#[tokio::test]
async fn bodies_are_checked_like_the_cli_flags_and_a_bad_one_changes_nothing() {
    let w = world().await;
    let before = Snapshot::take(&w.redis).await;
    for (path, body) in [
        (
            "/api/v1/cache/cleanup/orphaned-tasks",
            json!({"grace_seconds": -1}),
        ),
        (
            "/api/v1/cache/cleanup/orphaned-tasks",
            json!({"grace_seconds": 86401}),
        ),
        (
            "/api/v1/cache/cleanup/orphaned-tasks",
            json!({"dryrun": true}),
        ),
        (
            "/api/v1/cache/cleanup/orphaned-tasks",
            json!({"dry_run": "yes"}),
        ),
        ("/api/v1/cache/cleanup/orphaned-tasks", json!([1])),
        (
            "/api/v1/cache/cleanup/full",
            json!({"max_age_hours": 87601}),
        ),
        ("/api/v1/cache/cleanup/full", json!({"max_age_hours": -0.5})),
        ("/api/v1/cache/archive/restore", json!({})),
        (
            "/api/v1/cache/archive/restore",
            json!({"run_id": "x", "from_file": "/etc/passwd"}),
        ),
    ] {
        let (status, _, text) = w
            .call(Method::POST, path, Some(ADMIN_TOKEN), Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {text}");
        assert_eq!(error_code(&text), "bad_request");
    }
    let res = w
        .client
        .post(w.url("/api/v1/cache/cleanup/orphaned-tasks"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "text/plain")
        .body("dry_run")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let res = w
        .client
        .post(w.url("/api/v1/cache/cleanup/orphaned-tasks"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(vec![b' '; DEFAULT_BODY_LIMIT + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    Snapshot::take(&w.redis)
        .await
        .assert_same_content(&before, "a refused request changed Redis");

    // No body at all is `{}`: the seed's `curl -X POST …` (a real run, after the checks above).
    let res = w
        .client
        .post(w.url("/api/v1/cache/cleanup/orphaned-tasks"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().contains_key("x-run-id"));
    w.stop().await;
}

#[tokio::test]
async fn errors_have_one_shape_and_the_request_id_travels() {
    let w = world().await;
    let res = w
        .client
        .get(w.url("/api/v1/nothing-here"))
        .header("x-request-id", "my-request-42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(res.headers()["x-request-id"], "my-request-42");
    assert_eq!(error_code(&res.text().await.unwrap()), "not_found");

    let (status, headers, text) = w
        .call(
            Method::DELETE,
            "/api/v1/cache/status",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{text}");
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(error_code(&text), "method_not_allowed");
    w.stop().await;
}

#[tokio::test]
async fn ten_failures_from_one_peer_get_it_429_for_a_minute() {
    let w = world().await;
    let attempt = |peer: &'static str, token: &'static str| {
        let req = w
            .client
            .get(w.url("/api/v1/cache/runs"))
            .header("x-forwarded-for", peer)
            .bearer_auth(token);
        async move { req.send().await.unwrap() }
    };
    for _ in 0..10 {
        assert_eq!(
            attempt("203.0.113.7", "wrong").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let blocked = attempt("203.0.113.7", ADMIN_TOKEN).await;
    assert_eq!(blocked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(blocked.headers().contains_key("retry-after"));
    assert_eq!(
        error_code(&blocked.text().await.unwrap()),
        "too_many_requests"
    );
    // A client's own X-Forwarded-For line before the proxy's changes nothing.
    let spoofed = w
        .client
        .get(w.url("/api/v1/cache/runs"))
        .header("x-forwarded-for", "203.0.113.99")
        .header("x-forwarded-for", "203.0.113.7")
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another peer behind the same trusted proxy is not blocked.
    assert_eq!(
        attempt("203.0.113.8", ADMIN_TOKEN).await.status(),
        StatusCode::OK
    );
    w.stop().await;
}

#[tokio::test]
async fn healthz_needs_no_token_and_says_only_ok_or_unavailable() {
    let w = world().await;
    let res = w.client.get(w.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    let World {
        redis,
        addr,
        metrics_addr: _,
        client,
        stop,
        server,
        janitor,
        _dir,
    } = w;
    drop(redis);
    let res = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"status": "unavailable"})
    );
    let (status, _, text) = {
        let res = client
            .get(format!("http://{addr}/api/v1/cache/status"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        (res.status(), (), res.text().await.unwrap())
    };
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(error_code(&text), "redis_unreachable");
    drop(janitor);
    let _ = stop.unwrap().send(());
    server.unwrap().await.unwrap();
}

#[tokio::test]
async fn the_openapi_document_lists_every_path_and_schema() {
    let w = world().await;
    let res = w.client.get(w.url("/openapi.json")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let doc: Value = res.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v1/cache/status", "get"),
        ("/api/v1/cache/celery-tasks", "get"),
        ("/api/v1/cache/runs", "get"),
        ("/api/v1/cache/cleanup/orphaned-tasks", "post"),
        ("/api/v1/cache/cleanup/full", "post"),
        ("/api/v1/cache/archive/restore", "post"),
        ("/api/v1/cache/archive", "get"),
        ("/api/v1/cache/queues/{name}/purge", "post"),
        ("/metrics", "get"),
        ("/healthz", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from /openapi.json"
        );
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "StatusReport",
        "TaskRow",
        "CleanupReport",
        "FullCleanupReport",
        "RestoreReport",
        "RunRecord",
        "ErrorBody",
        "ArchivePage",
        "ArchiveItem",
        "PurgeBody",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
    // The status schema names exactly the fields the report serializes.
    let (_, status) = w.admin(Method::GET, "/api/v1/cache/status", None).await;
    let mut documented: Vec<&str> = schemas["StatusReport"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut served: Vec<&str> = status
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    w.stop().await;
}

#[tokio::test]
async fn with_a_certificate_it_answers_https_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;

    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pems = tempfile::tempdir().unwrap();
    let (cert, key) = (pems.path().join("cert.pem"), pems.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let w = world_with(Some((cert, key))).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let get = |path: &str, token: Option<&str>| {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
    };
    for (request, expected) in [
        (get("/healthz", None), "200 OK"),
        (get("/api/v1/cache/runs", Some(ADMIN_TOKEN)), "200 OK"),
        (get("/api/v1/cache/runs", None), "401 Unauthorized"),
    ] {
        let tcp = tokio::net::TcpStream::connect(w.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {expected}")),
            "{request}: {answer}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("x-request-id"),
            "{answer}"
        );
    }
    // Plain HTTP on the TLS port gets no answer.
    let plain = w.client.get(w.url("/healthz")).send().await;
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "{plain:?}"
    );
    w.stop().await;
}

#[tokio::test]
async fn a_certificate_that_cannot_be_read_stops_the_start() {
    let redis = TestRedis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db_url = sqlite_owners::create(dir.path()).await;
    let text = config_text(&redis, &db_url, dir.path(), "");
    let settings =
        janitor_config::resolve_text(&text, &janitor_config::Flags::default(), &|_| None).unwrap();
    let get_env = |k: &str| (k == JWT_ENV).then(|| JWT_SECRET.to_owned());
    let auth = Authenticator::from_settings(&settings.api, &get_env).unwrap();
    let missing = dir.path().join("missing.pem");
    let options = ServeOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        insecure_no_auth: false,
        tls: Some((missing.clone(), missing)),
        allow_plain_http: false,
        request_timeout: None,
        body_limit: DEFAULT_BODY_LIMIT,
    };
    let err = match Server::bind(Janitor::connect(settings).await.unwrap(), auth, &options).await {
        Err(e) => e,
        Ok(_) => panic!("started without its certificate"),
    };
    assert!(
        matches!(
            err,
            janitor_server::ServeError::Startup(janitor_server::StartupError::Tls(_))
        ),
        "{err}"
    );
}

/// The newest run record, once it is no longer running (waits up to 20 s).
async fn finished_run(w: &World, run_id: Option<&str>) -> Value {
    for _ in 0..200 {
        let (_, runs) = w.admin(Method::GET, "/api/v1/cache/runs", None).await;
        if let Some(run) = runs["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| run_id.is_none_or(|id| r["run_id"] == id))
        {
            if run["outcome"] != "running" {
                return run.clone();
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no finished run");
}

#[tokio::test]
async fn a_cleanup_finishes_when_its_client_goes_away() {
    let w = world().await;
    let gone = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        w.client
            .post(w.url("/api/v1/cache/cleanup/orphaned-tasks"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"grace_seconds": 2}))
            .send(),
    )
    .await;
    assert!(
        gone.is_err(),
        "the cleanup answered within its grace period"
    );
    let run = finished_run(&w, None).await;
    assert_eq!(run["outcome"], "completed", "{run}");
    assert!(run["removed"]["queue"].as_u64().unwrap() > 0, "{run}");
    // Its audit line is written all the same.
    let mut audited = None;
    for _ in 0..50 {
        let audit = std::fs::read_to_string(w._dir.path().join("audit.jsonl")).unwrap();
        audited = audit
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|v| v["action"] == "api_request");
        if audited.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let audited = audited.expect("an api_request audit line");
    assert_eq!(audited["run_id"], run["run_id"]);
    assert_eq!(audited["outcome"], "completed");
    w.stop().await;
}

#[tokio::test]
async fn shutdown_stops_a_running_cleanup_at_a_safe_point_and_waits_for_it() {
    let mut w = world().await;
    let request = {
        let client = w.client.clone();
        let url = w.url("/api/v1/cache/cleanup/orphaned-tasks");
        tokio::spawn(async move {
            let res = client
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"grace_seconds": 30}))
                .send()
                .await
                .unwrap();
            (res.status(), res.text().await.unwrap())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let started = std::time::Instant::now();
    let _ = w.stop.take().unwrap().send(());
    let (status, text) = request.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(error_code(&text), "interrupted", "{text}");
    w.server.take().unwrap().await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "shutdown waited out the grace period"
    );
    // The run ended properly: recorded as interrupted (or not recorded: it changed nothing),
    // its lock released, nothing removed.
    let mut con = w.redis.con().await;
    let lock: Option<String> = redis::cmd("GET")
        .arg("celery-janitor:lock")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(lock, None);
}

#[tokio::test]
async fn purge_needs_the_queue_name_then_removes_the_queue_and_the_archive_lists_it() {
    let w = world().await;
    let before = Snapshot::take(&w.redis).await;
    let queued = w.janitor.queue_length("celery").await.unwrap();
    assert!(queued > 0);
    for body in [
        None,
        Some(json!({})),
        Some(json!({"confirm": "custom"})),
        Some(json!({"confirm": "celery ", "force": true})),
        Some(json!({"confirm": "celery", "unknown": 1})),
    ] {
        let (status, headers, text) = w
            .call(
                Method::POST,
                "/api/v1/cache/queues/celery/purge",
                Some(ADMIN_TOKEN),
                body.clone(),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}: {text}");
        assert_eq!(error_code(&text), "bad_request");
        assert!(!headers.contains_key("x-run-id"));
    }
    // A viewer may not purge, even with the right confirm.
    let (status, _, _) = w
        .call(
            Method::POST,
            "/api/v1/cache/queues/celery/purge",
            Some(VIEWER_TOKEN),
            Some(json!({"confirm": "celery"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    Snapshot::take(&w.redis)
        .await
        .assert_same_content(&before, "a refused purge changed Redis");

    let (status, headers, text) = w
        .call(
            Method::POST,
            "/api/v1/cache/queues/celery/purge",
            Some(ADMIN_TOKEN),
            Some(json!({"confirm": "celery"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let report: Value = serde_json::from_str(&text).unwrap();
    let run_id = headers["x-run-id"].to_str().unwrap().to_owned();
    assert_eq!(report["run_id"], run_id.as_str());
    assert_eq!(report["removed"]["queue"].as_u64(), Some(queued), "{text}");
    assert_eq!(report["removed"]["unacked"].as_u64(), Some(0), "{text}");
    assert_eq!(w.janitor.queue_length("celery").await.unwrap(), 0);

    // The archive lists what the purge removed, a page at a time, without the stored bytes.
    let mut seen = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/cache/archive?run_id={run_id}&limit=2&cursor={c}"),
            None => format!("/api/v1/cache/archive?run_id={run_id}&limit=2"),
        };
        let (status, _, text) = w.call(Method::GET, &path, Some(VIEWER_TOKEN), None).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let page: Value = serde_json::from_str(&text).unwrap();
        for item in page["items"].as_array().unwrap() {
            assert_eq!(item["run_id"], run_id.as_str());
            assert_eq!(item["reason"], "purged");
            assert_eq!(item["location"], "queue");
            assert!(
                item.get("body").is_none() && item.get("value").is_none(),
                "{item}"
            );
            seen += 1;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen as u64, queued);
    for bad in [
        "/api/v1/cache/archive?limit=0",
        "/api/v1/cache/archive?limit=10001",
        "/api/v1/cache/archive?cursor=not-a-cursor",
        "/api/v1/cache/archive?nope=1",
    ] {
        let (status, _, text) = w.call(Method::GET, bad, Some(ADMIN_TOKEN), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {text}");
        assert_eq!(error_code(&text), "bad_request");
    }

    // The purge is audited with its caller, and restore puts the messages back.
    let audit = std::fs::read_to_string(w._dir.path().join("audit.jsonl")).unwrap();
    let line = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["action"] == "api_request" && v["run_id"] == run_id.as_str())
        .unwrap_or_else(|| panic!("no audit line: {audit}"));
    assert_eq!(line["endpoint"], "POST /api/v1/cache/queues/{name}/purge");
    assert_eq!(line["actor"], "ops");
    assert_eq!(line["changed"].as_u64(), Some(queued));
    assert_eq!(
        line["request_id"],
        headers["x-request-id"].to_str().unwrap()
    );
    let (status, restored) = w
        .admin(
            Method::POST,
            "/api/v1/cache/archive/restore",
            Some(json!({"run_id": run_id})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{restored}");
    assert_eq!(w.janitor.queue_length("celery").await.unwrap(), queued);
    w.stop().await;
}

#[tokio::test]
async fn a_purge_over_purge_max_needs_force() {
    let w = world_full(None, "purge_max = 2").await;
    let queued = w.janitor.queue_length("celery").await.unwrap();
    assert!(queued > 2);
    let before = Snapshot::take(&w.redis).await;
    let (status, text) = w
        .admin(
            Method::POST,
            "/api/v1/cache/queues/celery/purge",
            Some(json!({"confirm": "celery"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(
        text["error"]["message"].as_str().unwrap().contains("force"),
        "{text}"
    );
    Snapshot::take(&w.redis)
        .await
        .assert_same_content(&before, "a refused purge changed Redis");
    let (status, report) = w
        .admin(
            Method::POST,
            "/api/v1/cache/queues/celery/purge",
            Some(json!({"confirm": "celery", "force": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["removed"]["queue"].as_u64(), Some(queued));
    w.stop().await;
}

/// The `/metrics` text as name{labels} → value.
fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// Waits (up to 20 s) for `/metrics` to serve figures computed after `since` (Unix seconds).
async fn fresh_metrics(w: &World, token: Option<&str>, since: f64) -> String {
    for _ in 0..200 {
        let (status, headers, text) = w.call(Method::GET, "/metrics", token, None).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        let s = samples(&text);
        if let Some(age) = s.get("celery_janitor_figures_age_seconds") {
            if (now() as f64) - age >= since {
                return text;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no fresh figures");
}

#[tokio::test]
async fn metrics_are_the_status_figures_and_count_what_runs_did() {
    let w = world_full(None, "refresh_seconds = 1").await;
    let (status, _, _) = w.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let text = fresh_metrics(&w, Some(VIEWER_TOKEN), 0.0).await;
    for name in [
        "celery_janitor_queue_length",
        "celery_janitor_unacked",
        "celery_janitor_result_keys",
        "celery_janitor_result_keys_without_ttl",
        "celery_janitor_entries",
        "celery_janitor_removed_total",
        "celery_janitor_restored_total",
        "celery_janitor_lost_rows_marked_total",
        "celery_janitor_guard_events_total",
        "celery_janitor_figures_age_seconds",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}: {text}");
        assert!(text.contains(&format!("# TYPE {name} ")), "{name}: {text}");
    }
    assert!(text.contains("# TYPE celery_janitor_cleanup_duration_seconds histogram"));
    let s = samples(&text);
    let report = w
        .janitor
        .status(&ReadOptions::default(), &RunCtx::quiet())
        .await
        .unwrap();
    let status = serde_json::to_value(&report).unwrap();
    let tasks = &status["tasks"];
    let queues: f64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("celery_janitor_queue_length{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(queues, tasks["by_location"]["queue"].as_f64().unwrap());
    assert!(s["celery_janitor_queue_length{queue=\"celery\"}"] > 0.0);
    assert_eq!(
        s["celery_janitor_unacked"],
        tasks["by_location"]["unacked"].as_f64().unwrap()
    );
    assert_eq!(
        s["celery_janitor_result_keys"],
        tasks["by_location"]["result"].as_f64().unwrap()
    );
    for location in ["queue", "unacked", "result"] {
        for (state, field) in [
            ("orphaned", "orphaned_by_location"),
            ("undecidable", "undecidable_by_location"),
        ] {
            assert_eq!(
                s[&format!("celery_janitor_entries{{state=\"{state}\",location=\"{location}\"}}")],
                tasks[field][location].as_f64().unwrap(),
                "{state} {location}"
            );
        }
    }
    for state in ["live", "orphaned", "unowned", "undecidable"] {
        let total: f64 = ["queue", "unacked", "result"]
            .iter()
            .map(|l| s[&format!("celery_janitor_entries{{state=\"{state}\",location=\"{l}\"}}")])
            .sum();
        assert_eq!(total, tasks[state].as_f64().unwrap(), "{state}");
    }
    assert_eq!(s["celery_janitor_removed_total{location=\"queue\"}"], 0.0);

    // A cleanup's removals show once the figures are refreshed, and stay counted.
    let (status, report) = w
        .admin(Method::POST, "/api/v1/cache/cleanup/orphaned-tasks", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let done = now() as f64 + 1.0;
    let text = fresh_metrics(&w, Some(ADMIN_TOKEN), done).await;
    let s = samples(&text);
    for location in ["queue", "unacked", "result"] {
        assert_eq!(
            s[&format!("celery_janitor_removed_total{{location=\"{location}\"}}")],
            report["removed"][location].as_f64().unwrap(),
            "{location}"
        );
    }
    assert_eq!(s["celery_janitor_cleanup_duration_seconds_count"], 1.0);
    assert!(s["celery_janitor_last_cleanup_success_timestamp_seconds"] > 0.0);
    assert!(!text.contains(report["run_id"].as_str().unwrap()));
    let (status, restored) = w
        .admin(
            Method::POST,
            "/api/v1/cache/archive/restore",
            Some(json!({"run_id": report["run_id"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{restored}");
    let done = now() as f64 + 1.0;
    let s = samples(&fresh_metrics(&w, Some(ADMIN_TOKEN), done).await);
    let removed: f64 = ["queue", "unacked", "result"]
        .iter()
        .map(|l| report["removed"][l].as_f64().unwrap())
        .sum();
    assert_eq!(s["celery_janitor_restored_total"], removed);
    assert_eq!(s["celery_janitor_cleanup_duration_seconds_count"], 1.0);
    w.stop().await;
}

#[tokio::test]
async fn metrics_bind_serves_metrics_alone_without_a_token() {
    let w = world_full(None, "metrics_bind = \"127.0.0.1:0\"\nrefresh_seconds = 1").await;
    let addr = w.metrics_addr.expect("a metrics listener");
    let mut text = String::new();
    for _ in 0..100 {
        let res = w
            .client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        text = res.text().await.unwrap();
        if text.contains("celery_janitor_figures_age_seconds ") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(text.contains("celery_janitor_unacked "), "{text}");
    // Nothing else is served there, and the main listener still wants a token.
    let res = w
        .client
        .get(format!("http://{addr}/api/v1/cache/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let (status, _, _) = w.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    w.stop().await;
}

#[tokio::test]
async fn a_purge_while_a_cleanup_runs_gets_409_with_the_holder() {
    let w = world().await;
    let first = {
        let client = w.client.clone();
        let url = w.url("/api/v1/cache/cleanup/orphaned-tasks");
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"grace_seconds": 2}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let (status, _, text) = w
        .call(
            Method::POST,
            "/api/v1/cache/queues/custom/purge",
            Some(ADMIN_TOKEN),
            Some(json!({"confirm": "custom"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert_eq!(error_code(&text), "busy");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(v["error"]["holder"]["run_id"].is_string(), "{text}");
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    // The purge never ran: no purge-queue run is recorded.
    let runs = w.janitor.runs(20).await.unwrap();
    assert!(runs.iter().all(|r| r.command != "purge-queue"), "{runs:?}");
    w.stop().await;
}
