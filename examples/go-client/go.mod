module foreman.example/goclient

go 1.22
