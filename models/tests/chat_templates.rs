//! Real chat templates (the models' own texts, in tests/fixtures/templates/) rendered by our
//! minijinja environment give what Python's jinja2 gives with transformers' settings
//! (fixture by scripts/make_template_fixture.py), and refuse what they refuse with the
//! template's own message.

use std::collections::BTreeMap;

use migserve_models::{ChatMessage, ChatTemplate};

#[derive(serde::Deserialize)]
struct Fixture {
    conversations: BTreeMap<String, Vec<ChatMessage>>,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    template: String,
    conversation: String,
    bos_token: String,
    eos_token: String,
    text: Option<String>,
    error: Option<String>,
}

#[test]
fn real_templates_render_as_jinja2_does() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates");
    let fixture: Fixture =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    assert!(fixture.cases.len() >= 28);
    let mut wrong = Vec::new();
    for case in &fixture.cases {
        let source = std::fs::read_to_string(dir.join(format!("{}.jinja", case.template))).unwrap();
        let template =
            ChatTemplate::new(source, case.bos_token.clone(), case.eos_token.clone()).unwrap();
        let messages = &fixture.conversations[&case.conversation];
        let what = format!("{} / {}", case.template, case.conversation);
        match (template.render(messages, true), &case.text, &case.error) {
            (Ok(got), Some(want), _) if &got == want => {}
            (Err(e), _, Some(message)) if e.to_string().contains(message.as_str()) => {}
            (got, want, error) => wrong.push(format!(
                "{what}:\n  ours:   {got:?}\n  jinja2: {want:?} {error:?}"
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
