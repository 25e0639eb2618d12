"""Files a stage writes and reads, and the checks on them: atomic writes (`files`), the
manifest of hashes (`manifest`), checkpoints (`checkpoint`), checks on untrusted model
files (`safety`) and archives (`archive`), the names of it all (`names`), and the
environment fingerprint every record carries (`environment`)."""
