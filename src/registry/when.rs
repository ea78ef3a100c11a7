//! `when:` conditions (placeholder: `true` and `false` only).

use super::template::TemplateContext;

#[derive(Debug, thiserror::Error)]
pub enum WhenError {
    #[error("cannot parse condition `{0}`")]
    Syntax(String),
}

#[derive(Debug, Clone)]
pub struct Expr(bool);

pub fn parse(text: &str) -> Result<Expr, WhenError> {
    match text.trim() {
        "true" => Ok(Expr(true)),
        "false" => Ok(Expr(false)),
        other => Err(WhenError::Syntax(other.to_owned())),
    }
}

impl Expr {
    pub fn eval(&self, _ctx: &TemplateContext<'_>) -> Result<bool, WhenError> {
        Ok(self.0)
    }
}
