//! Renderings of a plan: text for terminals, Markdown for PR comments, JSON for machines.
