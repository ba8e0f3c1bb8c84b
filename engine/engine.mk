# engine.mk - the content-based merging engine (issue: content sharing).
# ENGINE_SRC joins the agent library; ENGINE_TEST_SRC joins the test runner.
ENGINE_SRC :=
ENGINE_TEST_SRC :=
