pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google() // LiteRT and AndroidX are on Google's Maven repository
        mavenCentral()
    }
}

rootProject.name = "DmadDemo"
include(":app")
