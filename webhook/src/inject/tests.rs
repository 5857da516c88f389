use super::*;

fn review() -> Value {
    serde_json::from_str(include_str!("../../tests/fixtures/review-pod.json")).unwrap()
}

fn pod(review: &Value) -> Value {
    review["request"]["object"].clone()
}

/// Answers `review` and applies the patch, if any, to its pod.
fn run(injector: &Injector, review: &Value, scope: Scope) -> (AdmissionResponse, Value) {
    let answer = injector.review(&serde_json::to_vec(review).unwrap(), scope);
    assert_eq!(answer.status, 200);
    let response = answer.body.response.unwrap();
    let mut pod = pod(review);
    if let Some(patch) = &response.patch {
        let patch: json_patch::Patch = serde_json::from_slice(patch).unwrap();
        json_patch::patch(&mut pod, &patch).unwrap();
    }
    (response, pod)
}

fn init_containers(pod: &Value) -> Vec<&Value> {
    pod["spec"]["initContainers"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

#[test]
fn an_opted_in_pod_gets_the_init_container_env_and_socket_volume() {
    let (resp, pod) = run(&Injector::default(), &review(), Scope::Pod);
    assert!(resp.allowed);
    assert_eq!(resp.uid, "3f1b7d4e-7a0c-4c59-9d7e-2b1f6c0a9e11");
    let init = init_containers(&pod);
    assert_eq!(init.len(), 1);
    let c: Container = serde_json::from_value(init[0].clone()).unwrap();
    assert_eq!(c.name, INIT_CONTAINER);
    assert_eq!(c.image.as_deref(), Some("kite:0.1.0"));
    let env: Vec<_> = c.env.unwrap();
    let field = |n: &str| {
        env.iter()
            .find(|e| e.name == n)
            .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(field("POD_NAME").as_deref(), Some("metadata.name"));
    assert_eq!(
        field("POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    assert_eq!(field("POD_UID").as_deref(), Some("metadata.uid"));
    let socket = env.iter().find(|e| e.name == "KITE_SOCKET").unwrap();
    assert_eq!(socket.value.as_deref(), Some("/var/run/kite/kite.sock"));
    let mount = &c.volume_mounts.unwrap()[0];
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 2, "the service-account volume stays");
    let vol = volumes
        .iter()
        .find(|v| v["name"] == mount.name.as_str())
        .unwrap();
    assert_eq!(vol["hostPath"]["path"], "/var/run/kite");
    assert_eq!(mount.mount_path, "/var/run/kite");
    assert_eq!(pod["metadata"]["annotations"][INJECTED_ANNOTATION], "true");
    // The app container is untouched and the result is still a valid Pod.
    assert_eq!(
        pod["spec"]["containers"],
        review()["request"]["object"]["spec"]["containers"]
    );
    serde_json::from_value::<Pod>(pod).unwrap();
}

#[test]
fn existing_init_containers_volumes_and_annotations_are_kept_and_kite_runs_first() {
    let mut r = review();
    let obj = &mut r["request"]["object"];
    obj["spec"]["initContainers"] = json!([{"name": "migrate", "image": "busybox"}]);
    obj["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": SOCKET_VOLUME, "emptyDir": {}}));
    obj["metadata"]["annotations"] = json!({"team": "a/b~c"});
    let (_, pod) = run(&Injector::default(), &r, Scope::Pod);
    let names: Vec<_> = init_containers(&pod)
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, [json!(INIT_CONTAINER), json!("migrate")]);
    let vols: Vec<_> = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].clone())
        .collect();
    assert_eq!(vols.len(), 3);
    // The user's own volume of the same name is not replaced.
    assert_eq!(pod["spec"]["volumes"][1]["emptyDir"], json!({}));
    assert_eq!(
        pod["spec"]["initContainers"][0]["volumeMounts"][0]["name"],
        "kite-socket-1"
    );
    assert_eq!(pod["metadata"]["annotations"]["team"], "a/b~c");
    assert_eq!(pod["metadata"]["annotations"][INJECTED_ANNOTATION], "true");
}

#[test]
fn an_injected_pod_is_left_alone() {
    let (_, once) = run(&Injector::default(), &review(), Scope::Pod);
    let mut again = review();
    again["request"]["object"] = once.clone();
    let (resp, twice) = run(&Injector::default(), &again, Scope::Pod);
    assert!(resp.allowed && resp.patch.is_none());
    assert_eq!(twice, once);
    assert_eq!(resp.audit_annotations["decision"], "already injected");
}

#[test]
fn pods_not_opted_in_opted_out_or_in_excluded_namespaces_are_untouched() {
    let mut plain = review();
    plain["request"]["object"]["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove(MONITOR_LABEL);
    let mut opted_out = review();
    opted_out["request"]["object"]["metadata"]["annotations"] = json!({INJECT_ANNOTATION: "false"});
    let mut system = review();
    system["request"]["namespace"] = json!("kube-system");
    system["request"]["object"]["metadata"]["namespace"] = json!("kube-system");
    let mut own = review();
    own["request"]["namespace"] = json!("kite-system");
    for (r, scope, why) in [
        (&plain, Scope::Pod, "not opted in"),
        (&opted_out, Scope::Pod, "opted out"),
        (&opted_out, Scope::Namespace, "opted out"),
        (&system, Scope::Pod, "namespace excluded"),
        (&system, Scope::Namespace, "namespace excluded"),
        (&own, Scope::Namespace, "namespace excluded"),
    ] {
        let (resp, pod) = run(&Injector::default(), r, scope);
        assert!(resp.allowed && resp.patch.is_none(), "{why}");
        assert_eq!(resp.audit_annotations["decision"], why);
        assert_eq!(pod, r["request"]["object"]);
    }
    // In an opted-in namespace the label is not needed.
    let (resp, pod) = run(&Injector::default(), &plain, Scope::Namespace);
    assert!(resp.patch.is_some());
    assert_eq!(init_containers(&pod).len(), 1);
}

#[test]
fn the_configuration_reaches_the_container() {
    let injector = Injector {
        image: "registry.example/kite:9".into(),
        socket_dir: "/run/kite/".into(),
        socket_name: "agent.sock".into(),
        timeout: Duration::from_secs(3),
        command: vec!["/bin/kite-init".into()],
        ..Injector::default()
    };
    let c = injector.container("v");
    assert_eq!(c.image.as_deref(), Some("registry.example/kite:9"));
    assert_eq!(c.command.unwrap(), ["/bin/kite-init"]);
    let env = c.env.unwrap();
    let get = |n: &str| {
        env.iter()
            .find(|e| e.name == n)
            .unwrap()
            .value
            .clone()
            .unwrap()
    };
    assert_eq!(get("KITE_SOCKET"), "/run/kite/agent.sock");
    assert_eq!(get("KITE_INIT_TIMEOUT"), "3s");
}

#[test]
fn odd_reviews_get_a_reason_and_never_block() {
    let deployment: Value =
        serde_json::from_str(include_str!("../../tests/fixtures/review-deployment.json")).unwrap();
    let mut no_object = review();
    no_object["request"]["object"] = Value::Null;
    let mut bad_pod = review();
    bad_pod["request"]["object"]["spec"]["containers"] = json!("web");
    let mut delete = review();
    delete["request"]["operation"] = json!("DELETE");
    for (r, why) in [
        (&deployment, "only mutates Pods"),
        (&no_object, "no object"),
        (&bad_pod, "not a Pod"),
        (&delete, ""),
    ] {
        let (resp, _) = run(&Injector::default(), r, Scope::Pod);
        assert!(resp.allowed, "{why}");
        assert!(resp.patch.is_none(), "{why}");
        assert!(
            resp.result.message.contains(why),
            "{why}: {:?}",
            resp.result
        );
    }
    for (body, why) in [
        (&b"not json"[..], "not an AdmissionReview"),
        (
            br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#,
            "no request",
        ),
        (
            br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1"}"#,
            "expected an admission.k8s.io/v1",
        ),
        (
            br#"{"kind":"Pod","apiVersion":"v1"}"#,
            "expected an admission.k8s.io/v1",
        ),
    ] {
        let a = Injector::default().review(body, Scope::Pod);
        assert_eq!(a.status, 400, "{why}");
        let resp = a.body.response.unwrap();
        assert!(!resp.allowed);
        assert!(
            resp.result.message.contains(why),
            "{why}: {:?}",
            resp.result
        );
    }
}

#[test]
fn pods_the_patch_would_break_are_left_alone() {
    // An init container named kite-init without the marker annotation (e.g. copied from an
    // injected pod's YAML) counts as injected.
    let mut by_name = review();
    by_name["request"]["object"]["spec"]["initContainers"] =
        json!([{"name": INIT_CONTAINER, "image": "kite:old"}]);
    // An app container of that name would clash.
    let mut clash = review();
    clash["request"]["object"]["spec"]["containers"][0]["name"] = json!(INIT_CONTAINER);
    let mut windows = review();
    windows["request"]["object"]["spec"]["os"] = json!({"name": "windows"});
    for (r, why) in [
        (&by_name, "already injected"),
        (&clash, "a container is already named kite-init"),
        (&windows, "not a Linux pod"),
    ] {
        let (resp, pod) = run(&Injector::default(), r, Scope::Namespace);
        assert!(resp.allowed && resp.patch.is_none(), "{why}");
        assert_eq!(resp.audit_annotations["decision"], why);
        assert_eq!(pod, r["request"]["object"]);
    }
    let mut linux = review();
    linux["request"]["object"]["spec"]["os"] = json!({"name": "linux"});
    assert!(
        run(&Injector::default(), &linux, Scope::Pod)
            .0
            .patch
            .is_some()
    );
}

/// The init container's `KITE_ROUTE_PATTERNS` downward-API field, if any.
fn routes_field(pod: &Value) -> Option<String> {
    let init = init_containers(pod);
    let env = init.first()?["env"].as_array()?;
    env.iter().find(|e| e["name"] == ROUTES_ENV).map(|e| {
        e["valueFrom"]["fieldRef"]["fieldPath"]
            .as_str()
            .unwrap()
            .to_string()
    })
}

#[test]
fn route_patterns_reach_the_init_container_through_the_downward_api() {
    let mut r = review();
    r["request"]["object"]["metadata"]["annotations"] =
        json!({ROUTES_ANNOTATION: "/api/orders/{id}\n/files/{name}\n"});
    let (resp, pod) = run(&Injector::default(), &r, Scope::Pod);
    assert!(resp.allowed && resp.patch.is_some());
    assert_eq!(resp.warnings, None);
    assert_eq!(
        routes_field(&pod).as_deref(),
        Some("metadata.annotations['kite.io/routes']")
    );
    serde_json::from_value::<Pod>(pod).unwrap();
    // Without the annotation, no variable.
    let (_, pod) = run(&Injector::default(), &review(), Scope::Pod);
    assert_eq!(routes_field(&pod), None);
}

#[test]
fn malformed_route_patterns_are_answered_with_the_reason_and_do_not_block_the_pod() {
    let many: Vec<String> = (0..17).map(|i| format!("/p{i}")).collect();
    for (value, why) in [
        (
            "/orders/{id} orders/{id}".to_string(),
            "kite.io/routes: route pattern \"orders/{id}\" does not start with /",
        ),
        (
            "/static/**/x".to_string(),
            "kite.io/routes: route pattern \"/static/**/x\": ** matches the rest, so it must come last",
        ),
        (
            many.join(" "),
            "kite.io/routes: 17 patterns, at most 16 are allowed",
        ),
        (format!("/{}", "a".repeat(200)), "is longer than 128 bytes"),
    ] {
        let mut r = review();
        r["request"]["object"]["metadata"]["annotations"] = json!({ROUTES_ANNOTATION: value});
        let (resp, pod) = run(&Injector::default(), &r, Scope::Pod);
        assert!(resp.allowed, "{why}");
        assert_eq!(init_containers(&pod).len(), 1, "still injected: {why}");
        let warnings = resp.warnings.clone().unwrap_or_default();
        assert_eq!(warnings.len(), 1, "{why}: {warnings:?}");
        assert!(
            warnings[0].starts_with("kite-webhook: kite.io/routes: ") && warnings[0].contains(why),
            "{why}: {warnings:?}"
        );
        assert!(
            warnings[0].ends_with("its routes are inferred"),
            "{warnings:?}"
        );
        assert!(resp.audit_annotations["routes"].contains(why), "{why}");
        // The init container still gets the annotation: kite-init logs the same reason.
        assert!(routes_field(&pod).is_some());
    }
}
