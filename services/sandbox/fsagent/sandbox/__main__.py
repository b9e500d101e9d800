from fsagent.sandbox.main import main

main()
