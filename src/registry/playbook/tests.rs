use super::*;

const MINIMAL: &str = "\
id: minimal
version: 1
name: Minimal
owners: {technical: a@example.org, operational: b@example.org}
steps:
  - id: one
    action: noop
    rollback: none
";

#[test]
fn a_minimal_playbook_parses() {
    let playbook = parse_playbook(MINIMAL.as_bytes()).unwrap();
    assert_eq!(
        (playbook.id.as_str(), playbook.version, playbook.steps.len()),
        ("minimal", 1, 1)
    );
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    // Not YAML at all past the limit: only the size check can produce this error.
    let mut bytes = MINIMAL.as_bytes().to_vec();
    bytes.resize(MAX_DOCUMENT_BYTES + 1, 0xFF);
    assert!(matches!(
        parse_playbook(&bytes).unwrap_err(),
        DocumentError::TooLarge { size } if size == MAX_DOCUMENT_BYTES + 1
    ));
    let mut padded = MINIMAL.as_bytes().to_vec();
    padded.resize(MAX_DOCUMENT_BYTES, b'\n');
    parse_playbook(&padded).unwrap();
}

#[test]
fn non_utf8_and_binary_input_are_named_as_such() {
    assert!(matches!(
        parse_playbook(b"id: \xff\xfe\n").unwrap_err(),
        DocumentError::NotUtf8(_)
    ));
    assert!(matches!(
        parse_playbook(b"\xff\xfei\x00d\x00").unwrap_err(),
        DocumentError::NotUtf8(message) if message.contains("UTF-16")
    ));
    assert!(matches!(
        parse_playbook(b"\x7fELF\x02\x01\x01\x00\x00\x00").unwrap_err(),
        DocumentError::Binary(_)
    ));
}

#[test]
fn a_utf8_bom_is_accepted() {
    let with_bom = format!("\u{FEFF}{MINIMAL}");
    parse_playbook(with_bom.as_bytes()).unwrap();
}

#[test]
fn unknown_fields_are_refused_inside_rollback_and_inputs() {
    for (from, to, field) in [
        (
            "    rollback: none\n",
            "    rollback: {action: noop, with: {}, extra: 1}\n",
            "extra",
        ),
        (
            "steps:\n",
            "inputs:\n  pid: {type: integer, secret: true}\nsteps:\n",
            "secret",
        ),
    ] {
        let error = parse_playbook(MINIMAL.replace(from, to).as_bytes()).unwrap_err();
        assert!(
            matches!(&error, DocumentError::UnknownField(m) if m.contains(field)),
            "{error}"
        );
    }
}

#[test]
fn yes_is_not_a_boolean() {
    let text = MINIMAL.replace(
        "steps:\n",
        "inputs:\n  pid: {type: integer, required: yes}\nsteps:\n",
    );
    assert!(matches!(
        parse_playbook(text.as_bytes()).unwrap_err(),
        DocumentError::Syntax(_)
    ));
}

#[test]
fn merge_keys_are_refused() {
    let text = "\
id: minimal
version: 1
name: Minimal
owners: {<<: {technical: a@example.org}, operational: b@example.org}
steps: [{id: one, action: noop, rollback: none}]
";
    let error = parse_playbook(text.as_bytes()).unwrap_err();
    assert!(
        matches!(&error, DocumentError::Syntax(m) if m.contains("merge")),
        "{error}"
    );
}

#[test]
fn literal_parameter_kinds_are_checked() {
    use ParamKind as K;
    // Each kind with a literal it accepts (true) or refuses (false).
    let cases = [
        (K::IpOrCidr, "203.0.113.7", true),
        (K::IpOrCidr, "2001:db8::/32", true),
        (K::IpOrCidr, "10.0.0.0/8", true),
        (K::Url, "https://hooks.example.org/x?y=1", true),
        (K::Url, "http://127.0.0.1:8080", true),
        (K::AbsolutePath, "/usr/sbin/usermod", true),
        (K::Signal, "TERM", true),
        (K::Priority, "warning", true),
        (K::Duration, "10m", true),
        (K::SecretName, "soc-webhook.token", true),
        (K::IpOrCidr, "203.0.113.300", false),
        (K::IpOrCidr, "10.0.0.0/33", false),
        (K::IpOrCidr, "example.org", false),
        (K::Url, "ftp://example.org", false),
        (K::Url, "https://", false),
        (K::Url, "https://user:pw@example.org/", false),
        (K::Url, "https://user@example.org/", false),
        // The parser would drop the tab and newline; the URL checked must be the one sent.
        (K::Url, "https://example.org/a\tb", false),
        (K::Url, "https://example.org/\n", false),
        (K::Url, "https://exa mple.org/", false),
        (K::Url, "example.org/path", false),
        (K::AbsolutePath, "relative/path", false),
        (K::AbsolutePath, "/var/../etc/shadow", false),
        (K::Signal, "SIGKILL", false),
        // Listed by the validator once, but the actuator never sent it: a run would have failed.
        (K::Signal, "CONT", false),
        (K::Priority, "loud", false),
        (K::Duration, "10 minutes", false),
        (K::SecretName, "../../etc/shadow", false),
        (K::Integer, "5", false),
    ];
    for (kind, text, accepted) in cases {
        let checked = check_literal(kind, &Value::String(text.into()));
        assert_eq!(checked.is_ok(), accepted, "{kind:?} {text}: {checked:?}");
    }
    assert!(check_literal(K::StringList, &serde_json::json!(["a", 1])).is_err());
    check_literal(K::StringList, &serde_json::json!(["a", "b"])).unwrap();
}

#[test]
fn templated_urls_and_paths_must_fix_their_root() {
    let make = |with: &str| {
        format!(
            "id: t\nversion: 1\nname: T\nowners: {{technical: a, operational: b}}\n\
             inputs:\n  host: {{type: string}}\n  file: {{type: string}}\n\
             steps:\n  - id: s\n    action: {with}\n    rollback: none\n"
        )
    };
    let ok = [
        "notify\n    with: {message: \"x\", webhook: \"https://hooks.example.org/{{ subject.host }}\"}",
        "file.quarantine\n    with: {path: \"/srv/{{ subject.file }}\"}",
    ];
    for case in ok {
        parse_playbook(make(case).as_bytes()).unwrap_or_else(|e| panic!("{case}: {e}"));
    }
    let bad = [
        "notify\n    with: {message: \"x\", webhook: \"https://{{ subject.host }}/x\"}",
        "file.quarantine\n    with: {path: \"{{ subject.host }}/{{ subject.file }}\"}",
        "http.post\n    with: {url: \"https://h.example.org/\", secret: \"{{ subject.file }}\"}",
    ];
    for case in bad {
        let error = parse_playbook(make(case).as_bytes()).unwrap_err();
        assert!(
            matches!(
                error.rule(),
                Some(Rule::TemplateTypeMismatch | Rule::TemplateNotAllowed)
            ),
            "{case}: {error}"
        );
    }
}

#[test]
fn bindings_parse_and_duplicates_are_refused() {
    let good = "\
bindings:
  - {policy: p, outcome: contain, playbook: contain-host}
  - {policy: p, outcome: contain, playbook: contain-host, org_id: acme, cooldown_seconds: 60}
";
    assert_eq!(parse_bindings(good.as_bytes()).unwrap().bindings.len(), 2);
    let duplicate =
        format!("{good}  - {{policy: p, outcome: contain, playbook: other, org_id: acme}}\n");
    let error = parse_bindings(duplicate.as_bytes()).unwrap_err();
    assert_eq!(error.rule(), Some(Rule::DuplicateBinding), "{error}");
    assert!(error.to_string().starts_with("bindings[2]."), "{error}");
}

#[test]
fn parse_document_tells_bindings_from_playbooks() {
    assert!(matches!(
        parse_document(b"bindings: []\n").unwrap(),
        Document::Bindings(file) if file.bindings.is_empty()
    ));
    assert!(matches!(
        parse_document(MINIMAL.as_bytes()).unwrap(),
        Document::Playbook(_)
    ));
}

#[test]
fn unknown_yaml_tags_are_refused_not_ignored() {
    for text in [
        MINIMAL.replace("name: Minimal", "name: !shell Minimal"),
        MINIMAL.replace("name: Minimal", "!custom name: Minimal"),
        MINIMAL.replace("name: Minimal", "name: !include other.yaml"),
    ] {
        let error = parse_playbook(text.as_bytes()).unwrap_err();
        assert!(matches!(error, DocumentError::Syntax(_)), "{text}: {error}");
    }
    // Standard tags still work.
    parse_playbook(
        MINIMAL
            .replace("name: Minimal", "name: !!str Minimal")
            .as_bytes(),
    )
    .unwrap();
}
