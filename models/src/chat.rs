//! Chat templates (the Jinja text in `tokenizer.chat_template`), rendered with minijinja.

use minijinja::{context, Environment, Error, ErrorKind};
use serde_json::Value;

pub use crate::chat_message::ChatMessage;
use crate::chat_tools::{fold_tools, needs_folding};
use crate::config::Family;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::hf::json::JsonFile;
use crate::hf::HfDirectory;

/// ChatML, used when a model file carries no template of its own.
const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Gemma's turn format, for Gemma files that carry no template (the base models): system
/// text goes at the start of the next user turn, the assistant is `model`, other roles are
/// refused.
const GEMMA_TEMPLATE: &str = "{{ bos_token }}{%- set ns = namespace(system='') -%}\
{%- for message in messages -%}\
{%- if message['role'] == 'system' -%}{%- set ns.system = ns.system + message['content'] + '\n\n' -%}\
{%- else -%}\
{%- if message['role'] == 'user' -%}{%- set role = 'user' -%}\
{%- elif message['role'] == 'assistant' -%}{%- set role = 'model' -%}\
{%- else -%}{{ raise_exception('Gemma chats have system, user and assistant messages, not ' + message['role']) }}\
{%- endif -%}\
{{ '<start_of_turn>' + role + '\n' + (ns.system if role == 'user' else '') + (message['content'] | trim) + '<end_of_turn>\n' }}\
{%- if role == 'user' -%}{%- set ns.system = '' -%}{%- endif -%}\
{%- endif -%}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}";

/// A Hugging Face directory's template file (transformers writes it beside the tokenizer).
pub const JINJA_FILE: &str = "chat_template.jinja";

/// `tokenizer_config.json`'s `chat_template`: a string, or `[{"name", "template"}]`.
fn hf_template(config: &JsonFile) -> Result<Option<String>> {
    let key = "chat_template";
    let Some(value) = config.get(key) else {
        return Ok(None);
    };
    if let Some(text) = value.as_str() {
        return Ok(Some(text.to_string()));
    }
    let list = value
        .as_array()
        .ok_or_else(|| config.error(key, "expected a string or a list of named templates"))?;
    let named = |name: &str| {
        list.iter().find_map(|t| {
            (t.get("name").and_then(|n| n.as_str()) == Some(name))
                .then(|| t.get("template").and_then(|x| x.as_str()))
                .flatten()
        })
    };
    named("default")
        .map(|t| Some(t.to_string()))
        .ok_or_else(|| config.error(key, "a list of templates without one named `default`"))
}

/// A compiled chat template plus the special-token texts templates refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Whether the template reads a `tools` list (otherwise tools must be described in the
    /// messages themselves).
    reads_tools: bool,
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are the texts templates may insert.
    pub fn new(source: String, bos_token: String, eos_token: String) -> Result<Self> {
        let mut env = Environment::new();
        // As transformers renders chat templates (and so as their authors wrote them): the
        // newline after a block tag and the spaces before one are not output.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        let reads_tools = source.contains("tools");
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| ModelError::Template(e.to_string()))?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
            reads_tools,
        })
    }

    /// The file's `tokenizer.chat_template`; when it has none, the family's turn format
    /// (Gemma's for `gemma3`) or ChatML.
    pub fn from_gguf(
        file: &GgufFile,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self> {
        let source = file
            .optional("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();
        let family = file
            .optional("general.architecture")
            .and_then(|v| v.to_string().ok())
            .and_then(|a| Family::from_architecture(a));
        Self::or_default(source, family, bos_token, eos_token)
    }

    /// A Hugging Face directory's template: `chat_template.jinja`, else `tokenizer_config.json`'s
    /// `chat_template` (a string, or a list of named templates: the one named `default`);
    /// when neither, the family's turn format or ChatML.
    pub fn from_hf_dir(
        hf: &HfDirectory,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self> {
        let jinja = hf.dir().join(JINJA_FILE);
        let source = match std::fs::read_to_string(&jinja) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match hf.tokenizer_config()? {
                Some(config) => hf_template(config)?,
                None => None,
            },
            Err(e) => {
                return Err(ModelError::HfFile {
                    path: jinja,
                    reason: e.to_string(),
                })
            }
        };
        Self::or_default(source, Some(hf.config().family), bos_token, eos_token)
    }

    fn or_default(
        source: Option<String>,
        family: Option<Family>,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self> {
        let source = source.unwrap_or_else(|| {
            match family == Some(Family::Gemma3) {
                true => GEMMA_TEMPLATE,
                false => CHATML_TEMPLATE,
            }
            .to_string()
        });
        Self::new(
            source,
            bos_token.unwrap_or_default().to_string(),
            eos_token.unwrap_or_default().to_string(),
        )
    }

    /// Renders the conversation; with `add_generation_prompt` the text ends where the
    /// assistant's reply should begin.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, &[], add_generation_prompt)
    }

    /// As [`ChatTemplate::render`], with the tools the model may call (OpenAI's
    /// `{"type": "function", "function": {...}}` objects) as the template's `tools`; none:
    /// `tools` is undefined, as templates expect.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[Value],
        add_generation_prompt: bool,
    ) -> Result<String> {
        if messages.is_empty() {
            return Err(ModelError::InvalidInput(
                "a chat needs at least one message".into(),
            ));
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ModelError::Template(e.to_string()))?;
        // A template without tools of its own: the tools and calls go in the messages.
        let folded;
        let (messages, tools) = match !self.reads_tools && needs_folding(messages, tools) {
            true => {
                folded = fold_tools(messages, tools);
                (folded.as_slice(), &[][..])
            }
            false => (messages, tools),
        };
        template
            .render(context! {
                messages => messages,
                tools => (!tools.is_empty()).then_some(tools),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| ModelError::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_fallback_renders_roles_and_generation_prompt() {
        let t = ChatTemplate::new(CHATML_TEMPLATE.into(), String::new(), String::new()).unwrap();
        let text = t.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let no_prompt = t.render(&[ChatMessage::new("user", "Hi")], false).unwrap();
        assert_eq!(no_prompt, "<|im_start|>user\nHi<|im_end|>\n");
    }

    #[test]
    fn gemma_turns_fold_the_system_text_into_the_user_turn() {
        let t = ChatTemplate::new(GEMMA_TEMPLATE.into(), "<bos>".into(), "<eos>".into()).unwrap();
        let chat = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi "),
            ChatMessage::new("assistant", "Hello."),
            ChatMessage::new("user", "Capital of France?"),
        ];
        assert_eq!(
            t.render(&chat, true).unwrap(),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n\
             <start_of_turn>model\nHello.<end_of_turn>\n\
             <start_of_turn>user\nCapital of France?<end_of_turn>\n<start_of_turn>model\n"
        );
        let err = t
            .render(&[ChatMessage::new("wizard", "x")], true)
            .unwrap_err();
        assert!(err.to_string().contains("not wizard"), "{err}");
    }

    #[test]
    fn raise_exception_becomes_a_template_error() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok";
        let t = ChatTemplate::new(src.into(), String::new(), String::new()).unwrap();
        let err = t
            .render(&[ChatMessage::new("assistant", "x")], true)
            .unwrap_err();
        assert!(err.to_string().contains("first must be user"), "{err}");
        assert_eq!(
            t.render(&[ChatMessage::new("user", "x")], true).unwrap(),
            "ok"
        );
    }

    #[test]
    fn python_string_methods_work() {
        let t = ChatTemplate::new(
            "{{ messages[0]['content'].strip() }}".into(),
            String::new(),
            String::new(),
        )
        .unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "  x  ")], false)
                .unwrap(),
            "x"
        );
    }

    #[test]
    fn empty_conversation_is_rejected() {
        let t = ChatTemplate::new(CHATML_TEMPLATE.into(), String::new(), String::new()).unwrap();
        assert!(t.render(&[], true).is_err());
    }
}
