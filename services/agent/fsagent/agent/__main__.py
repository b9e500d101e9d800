from fsagent.agent.main import main

main()
