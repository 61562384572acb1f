pytest_plugins = ["tests.fixtures_servers", "tests.fixtures_stack", "tests.fixtures_openai", "tests.fixtures_browser"]
