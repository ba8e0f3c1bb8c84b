/* list_engine.h - the engine's tests (content-based merging). */
#define TEST_LIST_ENGINE(X)
