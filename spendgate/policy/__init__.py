"""Policy: the security team's YAML, loaded and validated with positions (`model`), its
alert/sink/approval sections (`sections`) and its JSON Schema (`policy.schema.json`)."""
