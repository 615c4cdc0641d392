"""What every m2fdist process needs around its work: process set-up and teardown with the upstream
workarounds (``process``), devices, precision and the DeepSpeed JSON. Each workaround says which upstream
version it works around."""
