//! Hugging Face tensor names for the GGUF names the decoder asks for.

use crate::config::Family;

/// GGUF's Llama 3 RoPE factors: computed from `config.json`, not stored.
pub const ROPE_FREQS: &str = "rope_freqs.weight";

/// The transformers name of a GGUF tensor of a `family` model (`None`: no such tensor).
pub fn hf_name(gguf: &str, family: Family) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (base, suffix) = rest.rsplit_once('.')?;
    let gemma = family == Family::Gemma3;
    let part = match base {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_qkv" => "self_attn.qkv_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        // Gemma names its four norms after where they sit; the others call the pre-FFN norm
        // "post attention".
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" if family == Family::Phi3 => "mlp.gate_up_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{part}.{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_tensors_map_per_family() {
        let n = |g, f| hf_name(g, f).unwrap();
        assert_eq!(
            n("blk.3.attn_q.bias", Family::Qwen2),
            "model.layers.3.self_attn.q_proj.bias"
        );
        assert_eq!(
            n("blk.0.ffn_norm.weight", Family::Llama),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(
            n("blk.0.ffn_norm.weight", Family::Gemma3),
            "model.layers.0.pre_feedforward_layernorm.weight"
        );
        assert_eq!(
            n("blk.1.ffn_up.weight", Family::Phi3),
            "model.layers.1.mlp.gate_up_proj.weight"
        );
        assert_eq!(hf_name("rope_freqs.weight", Family::Llama), None);
    }
}
