"""The harness's echo bot: the handler package the benchmark adapter discovers (``BOTS_PACKAGE``)."""
