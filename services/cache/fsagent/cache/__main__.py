from fsagent.cache.main import main

main()
